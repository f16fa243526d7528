// Starts the vendored ReDoc on /openapi.json (the page at /redoc). ReDoc styles itself with <style> elements
// (styled-components, perfect-scrollbar): they carry this response's nonce (the bundle reads it from its <script>'s
// data-style-nonce, tools/vendor_js.py), the one style source the page's Content-Security-Policy adds to 'self'.
// Search is off: its index runs in a blob: worker the policy does not allow.
const root = document.getElementById("redoc");
window.Redoc.init(root.dataset.specUrl, {disableSearch: true}, root);
