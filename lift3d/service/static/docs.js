// Starts the vendored Swagger UI on /openapi.json (the page at /docs). A file of its own, not an inline script, so
// the page keeps the playground's Content-Security-Policy (script-src 'self'); no validator badge (it would call
// validator.swagger.io).
const root = document.getElementById("swagger-ui");
window.ui = window.SwaggerUIBundle({
  url: root.dataset.specUrl,
  domNode: root,
  deepLinking: true,
  validatorUrl: null,
  layout: "BaseLayout",
  presets: [window.SwaggerUIBundle.presets.apis],
});
