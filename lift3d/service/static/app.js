// The playground: builds the parameter form from the API's OpenAPI document, submits a generation, follows its
// event stream, shows the prepared input and the views as they arrive, then the model, video and downloads.
// Everything it loads comes from this server (no CDN).
import { createParser } from './vendor/eventsource-parser/index.js';
import { Viewer } from './viewer.js';

const $ = (selector) => document.querySelector(selector);
const KEY_STORAGE = 'lift3d.apiKey';
// `method` (sds | fast | fast+sds) comes first among them: it decides how the 3D asset is made.
const BASIC = ['method', 'num_views', 'seed', 'num_3d_max_steps', 'texture', 'video', 'remove_background', 'steps'];
// Fields the page sets itself (inputs, mode) or that need more than one control (lists, objects).
const SKIP = new Set(['image', 'prompt', 'negative_prompt', 'return_3d', 'webhook_url', 'text_prompts', 'regions',
  'pose_image', 'views', 'kind']);
const ROUTES = { image: '/v1/generation/image-to-3d', prompt: '/v1/generation/text-to-3d',
  views: '/v1/generation/multiview', posed: '/v1/generation/views-to-3d' };
const TERMINAL = new Set(['succeeded', 'failed', 'canceled', 'expired']);  // the stream ends after one
const RETRY_MS = 3000;  // the wait before reconnecting until the server sends `retry:` (browsers use about 3 s)
const RECONNECTS = 5;  // tries in a row that bring no event before the page stops following

const state = { spec: null, job: null, stream: null, viewer: null, blobs: [], shown: new Set(), poll: null };

function headers(extra = {}) {
  const key = $('#api-key').value.trim();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

async function api(path, options = {}) {
  return fetch(path, { ...options, headers: headers(options.headers || {}) });
}

async function blobUrl(path) {
  const response = await api(path);
  if (!response.ok) return null;
  const url = URL.createObjectURL(await response.blob());
  state.blobs.push(url);
  return url;
}

// ---------------------------------------------------------------------------------------------- the form
function schemaFor(mode) {
  const path = mode === 'posed' ? ROUTES.posed : ROUTES.image;
  const content = state.spec.paths[path].post.requestBody.content;
  return content['multipart/form-data'].schema.properties;
}

function valueSchema(schema) {
  const options = schema.anyOf || schema.oneOf;
  if (!options) return schema;
  const chosen = options.find((s) => s.type && s.type !== 'null' && s.type !== 'array') || options[0];
  return { ...schema, ...chosen, anyOf: undefined, oneOf: undefined };
}

function control(name, raw) {
  const schema = valueSchema(raw);
  const label = document.createElement('label');
  label.textContent = (raw.title || name.replace(/_/g, ' ')) + ' ';
  label.title = raw.description || '';
  let input;
  if (schema.enum) {
    input = document.createElement('select');
    if (raw.default === null || raw.default === undefined) input.append(new Option('default', ''));  // omitted
    for (const option of schema.enum) {
      if (option === null) continue;
      const item = new Option(String(option), String(option));
      item.selected = option === raw.default;
      input.append(item);
    }
  } else if (schema.type === 'boolean') {
    input = document.createElement('input');
    input.type = 'checkbox';
    input.checked = raw.default === true;
  } else {
    input = document.createElement('input');
    input.type = schema.type === 'integer' || schema.type === 'number' ? 'number' : 'text';
    if (schema.minimum !== undefined) input.min = schema.minimum;
    if (schema.maximum !== undefined) input.max = schema.maximum;
    if (input.type === 'number') input.step = schema.type === 'integer' ? (schema.multipleOf || 1) : 'any';
    if (raw.default !== undefined && raw.default !== null) input.value = raw.default;
    input.placeholder = raw.default === null || raw.default === undefined ? 'default' : String(raw.default);
  }
  input.name = name;
  input.dataset.type = schema.type;
  label.append(input);
  const error = document.createElement('p');
  error.className = 'field-error';
  error.dataset.errorFor = name;
  error.setAttribute('role', 'alert');
  return [label, error];
}

function buildParameters() {
  const mode = document.querySelector('input[name=mode]:checked').value;
  const basic = $('#basic');
  const advanced = $('#advanced');
  basic.replaceChildren(Object.assign(document.createElement('legend'), { textContent: 'Basic' }));
  advanced.replaceChildren();
  for (const [name, schema] of Object.entries(schemaFor(mode))) {
    if (SKIP.has(name) || (mode === 'views' && /^(method|video|camera_path|texture|target_faces|num_3d)/.test(name))) continue;
    const controls = control(name, schema);
    if (name === 'method') basic.querySelector('legend').after(...controls);  // first: how the asset is made
    else (BASIC.includes(name) ? basic : advanced).append(...controls);
  }
  $('#prompt-input').disabled = mode === 'posed';
  $('#negative-prompt').disabled = mode === 'posed';
}

function formBody(mode) {
  const form = new FormData();
  const file = $('#image-input').files[0];
  const prompt = $('#prompt-input').value.trim();
  if (mode === 'posed') {
    if (file) form.append('views', file);
  } else if (file) {
    form.append('image', file);
  } else if (prompt) {
    form.append('prompt', prompt);
    const negative = $('#negative-prompt').value.trim();
    if (negative) form.append('negative_prompt', negative);
  }
  if (mode === 'views') form.append('return_3d', 'false');
  for (const input of document.querySelectorAll('#basic [name], #advanced [name]')) {
    if (input.type === 'checkbox') form.append(input.name, input.checked ? 'true' : 'false');
    else if (input.value !== '') form.append(input.name, input.value);
  }
  const route = mode === 'posed' ? ROUTES.posed : mode === 'views' ? ROUTES.views : file ? ROUTES.image : ROUTES.prompt;
  return { form, route };
}

// ---------------------------------------------------------------------------------------------- errors
function clearErrors() {
  $('#error').hidden = true;
  $('#error').textContent = '';
  for (const element of document.querySelectorAll('.field-error')) element.textContent = '';
}

// The envelope's messages, all at the top and each next to its field: "num_views: …" names it; an upload's own
// error ("The file is not an image …") belongs to the image input.
function showError(body, fallback, uploaded = false) {
  const messages = body && Array.isArray(body.errors) ? body.errors : [fallback];
  $('#error').textContent = messages.join('\n');
  $('#error').hidden = false;
  for (const message of messages) {
    let field = String(message).split(':')[0].split('.')[0].trim();
    const named = (name) => document.querySelector(`.field-error[data-error-for="${CSS.escape(name)}"]`);
    if (!named(field) && uploaded) field = 'image';
    const slot = named(field);
    if (slot) slot.textContent = message;
  }
}

// ---------------------------------------------------------------------------------------------- a job
function log(text) {
  const item = document.createElement('li');
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $('#log').append(item);
  item.scrollIntoView({ block: 'nearest' });
}

function showProgress(data) {
  const step = data.progress ? ` ${data.progress.step}/${data.progress.total}` : '';
  const eta = data.eta_s != null ? ` · ETA ${Math.round(data.eta_s)} s` : '';
  $('#progress').textContent = `${data.status || 'running'} · ${data.stage || ''}${step}${eta}`;
  if (data.progress && data.progress.total) $('#bar').value = data.progress.step / data.progress.total;
}

// Follows job `id`'s event stream until its terminal event. It reads GET …/events with fetch (the API key travels
// as a header, which EventSource cannot send) and hands the bytes to eventsource-parser, which applies the SSE rules
// (https://html.spec.whatwg.org/multipage/server-sent-events.html): comment lines — the server's keep-alives — are no
// events (the page only counts them, in #log's data-keepalives), multi-line data is joined, `id:` and `retry:` are
// kept. A stream that ends before the terminal event is reopened after `retry` ms with Last-Event-ID, so no event
// repeats; after RECONNECTS tries in a row that bring nothing, the page stops following (the job goes on).
async function follow(id) {
  const controller = new AbortController();
  state.stream = controller;
  state.poll = setInterval(() => showPartial(id), 1500);
  const stream = { lastId: '', retryMs: RETRY_MS, ended: false, received: 0, messages: [] };
  const parser = createParser({
    onEvent: (message) => stream.messages.push(message),
    onId: (value) => { stream.lastId = value; },
    onRetry: (ms) => { stream.retryMs = ms; },
    onComment: () => { $('#log').dataset.keepalives = Number($('#log').dataset.keepalives || 0) + 1; },
    onError: (error) => console.warn(`event stream: ${error.message}`),  // an unknown field: ignored, as the spec says
  });
  try {
    for (let quiet = 0; !stream.ended && quiet <= RECONNECTS; quiet += 1) {
      if (quiet > 0) await new Promise((resolve) => setTimeout(resolve, stream.retryMs));
      const before = stream.received;
      if (!await readEvents(id, stream, parser, controller.signal)) break;
      if (stream.received > before) quiet = 0;
    }
  } catch (error) {
    if (error.name !== 'AbortError') log(`event stream: ${error.message}`);
  } finally {
    clearInterval(state.poll);
  }
  if (!stream.ended && state.stream === controller) {
    log('event stream: closed before the end (see Recent)');
    finished();
  }
}

// One connection: feeds the body to `parser` and handles the events it yields. False when there is nothing to
// reconnect to (204: the last id was the terminal event; an error status, logged).
async function readEvents(id, stream, parser, signal) {
  const resume = stream.lastId ? { 'Last-Event-ID': stream.lastId } : {};
  let response;
  try {
    response = await api(`/v1/generation/${id}/events`, { signal, headers: resume });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    return true;  // the network: try again after `retry`
  }
  if (response.status === 204) return false;
  if (!response.ok) {
    log(`event stream: HTTP ${response.status}`);
    return false;
  }
  parser.reset();  // a new stream: drop a half-received event of the last one
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (error) {
      if (error.name === 'AbortError') throw error;
      return true;  // the connection broke: reconnect
    }
    if (chunk.done) return true;
    parser.feed(chunk.value);
    while (stream.messages.length && !stream.ended) {
      const message = stream.messages.shift();
      stream.received += 1;
      stream.ended = await onEvent(id, message.event || 'message', message.data ? JSON.parse(message.data) : {});
    }
    if (stream.ended) {
      reader.cancel().catch(() => {});
      return true;
    }
  }
}

// One event: status and progress update the progress line; a terminal event ends the job's view (true). Other
// names (none today) are ignored, as an EventSource ignores events nobody listens to.
async function onEvent(id, event, data) {
  if (event === 'status' || event === 'progress') {
    showProgress(data);
    if (event === 'status') log(`${data.status} · ${data.stage || ''}`);
    return false;
  }
  if (!TERMINAL.has(event)) return false;
  log(event);
  finished();
  if (event === 'succeeded') {
    $('#progress').textContent = 'succeeded';
    $('#bar').value = 1;
    await showResult(id);
  } else {
    $('#progress').textContent = event;
    if (event !== 'canceled') showError(data, event);  // the terminal event carries the error envelope
  }
  loadHistory();
  return true;
}

function finished() {
  $('#cancel').disabled = true;
  $('#submit').disabled = false;
  state.stream = null;
}

async function showPartial(id) {
  const response = await api(`/v1/generation/${id}/artifacts`);
  if (!response.ok) return;
  for (const artifact of (await response.json()).artifacts) await showArtifactImage(artifact);
}

async function showArtifactImage(artifact) {
  if (state.shown.has(artifact.name) || !artifact.name.endsWith('.png') || artifact.name === 'views.png') return;
  state.shown.add(artifact.name);
  const url = await blobUrl(artifact.url);
  if (!url) { state.shown.delete(artifact.name); return; }
  if (artifact.name === 'input.png') {
    Object.assign($('#preview'), { src: url, hidden: false, alt: 'Prepared input (background removed)' });
  } else {
    $('#views').append(Object.assign(document.createElement('img'), { src: url, alt: artifact.name }));
  }
}

async function showResult(id) {
  const body = await (await api(`/v1/generation/${id}/artifacts`)).json();
  const names = body.artifacts.map((a) => a.name);
  for (const artifact of body.artifacts) await showArtifactImage(artifact);
  const list = $('#downloads');
  list.replaceChildren();
  for (const artifact of body.artifacts) {
    const url = await blobUrl(artifact.url);
    const link = Object.assign(document.createElement('a'), { href: url, textContent: artifact.name,
      download: artifact.name.replace(/\//g, '_') });
    if (artifact.name === 'model.glb') link.dataset.testid = 'download-glb';
    const item = document.createElement('li');
    item.append(link);
    list.append(item);
    if (artifact.name === 'turntable.mp4') Object.assign($('#video'), { src: url, hidden: false });
    if (artifact.name === 'metadata.json') {
      const text = await (await fetch(url)).text();
      Object.assign($('#metadata'), { textContent: JSON.stringify(JSON.parse(text), null, 2), hidden: false });
    }
  }
  $('#textured').disabled = !names.includes('model_textured.glb');
  state.job = { id, names };
  await loadModel();
}

async function loadModel() {
  if (!state.job || !state.job.names.some((n) => n.endsWith('.glb'))) return;
  const name = $('#textured').checked && state.job.names.includes('model_textured.glb') ? 'model_textured.glb' : 'model.glb';
  const response = await api(`/v1/generation/${state.job.id}/artifacts/${name}`);
  if (!response.ok) return;
  try {
    state.viewer = state.viewer || new Viewer($('#viewer'));
    await state.viewer.load(await response.arrayBuffer());
  } catch (error) {
    showError(null, `the 3D viewer could not show the model: ${error.message}`);
  }
}

function reset() {
  clearErrors();
  for (const url of state.blobs) URL.revokeObjectURL(url);
  Object.assign(state, { blobs: [], shown: new Set(), job: null });
  $('#views').replaceChildren();
  $('#downloads').replaceChildren();
  $('#log').replaceChildren();
  $('#log').dataset.keepalives = '0';
  $('#metadata').hidden = true;
  $('#video').hidden = true;
  $('#viewer').dataset.loaded = 'false';
  $('#bar').value = 0;
}

async function submit(event) {
  event.preventDefault();
  if (state.stream) return;
  reset();
  const mode = document.querySelector('input[name=mode]:checked').value;
  const { form, route } = formBody(mode);
  if (!form.has('image') && !form.has('prompt') && !form.has('views')) {
    showError({ errors: [mode === 'posed' ? 'image: choose a ZIP of posed views' : 'image: choose an image or write a prompt'] });
    return;
  }
  $('#submit').disabled = true;
  $('#progress').textContent = 'submitting…';
  const response = await api(route, { method: 'POST', body: form });
  const body = await response.json().catch(() => null);
  if (response.status !== 202) {
    $('#submit').disabled = false;
    $('#progress').textContent = 'Idle.';
    showError(body, `HTTP ${response.status}`, form.has('image') || form.has('views'));
    return;
  }
  log(`accepted ${body.id}`);
  $('#cancel').disabled = false;
  follow(body.id);
  state.job = { id: body.id, names: [] };
}

async function cancel() {
  if (!state.job) return;
  clearInterval(state.poll);  // a canceled job's artifacts answer 410; the event stream reports the end
  const response = await api(`/v1/generation/${state.job.id}`, { method: 'DELETE' });
  log(`cancel: HTTP ${response.status}`);
}

// ---------------------------------------------------------------------------------------------- history
function authRequired() {
  return Boolean(state.spec && state.spec.components && state.spec.components.securitySchemes);
}

async function loadHistory() {
  if (authRequired() && !$('#api-key').value.trim()) return;  // nothing to list yet, and no 401 to log
  const response = await api('/v1/generations?limit=20');
  const list = $('#history');
  list.replaceChildren();
  if (!response.ok) return;
  for (const job of (await response.json()).results) {
    const button = Object.assign(document.createElement('button'), { type: 'button',
      textContent: `${job.kind} · ${job.status}${job.prompt ? ` · ${job.prompt.slice(0, 24)}` : ''}` });
    button.addEventListener('click', async () => {
      reset();
      if (job.status === 'succeeded') await showResult(job.id);
      else if (job.status === 'queued' || job.status === 'running') follow(job.id);
    });
    const item = document.createElement('li');
    item.append(button);
    list.append(item);
  }
}

// ---------------------------------------------------------------------------------------------- start
function wireInputs() {
  const key = $('#api-key');
  key.value = localStorage.getItem(KEY_STORAGE) || '';
  key.addEventListener('change', () => { localStorage.setItem(KEY_STORAGE, key.value.trim()); loadHistory(); });
  const drop = $('#drop');
  const file = $('#image-input');
  const preview = () => {
    const chosen = file.files[0];
    if (chosen && chosen.type.startsWith('image/')) {
      const url = URL.createObjectURL(chosen);
      Object.assign($('#preview'), { src: url, hidden: false, alt: 'Input image' });
    }
  };
  file.addEventListener('change', preview);
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    file.files = e.dataTransfer.files;
    preview();
  });
  drop.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') file.click(); });
  for (const radio of document.querySelectorAll('input[name=mode]')) radio.addEventListener('change', buildParameters);
  $('#form').addEventListener('submit', submit);
  $('#cancel').addEventListener('click', cancel);
  $('#refresh').addEventListener('click', loadHistory);
  $('#textured').addEventListener('change', loadModel);
  $('#wireframe').addEventListener('change', (e) => state.viewer?.setMode({ wireframe: e.target.checked }));
  $('#normals').addEventListener('change', (e) => state.viewer?.setMode({ normals: e.target.checked }));
  $('#light').addEventListener('input', (e) => state.viewer?.setLight(Number(e.target.value)));
}

async function start() {
  wireInputs();
  state.spec = await (await fetch('/openapi.json')).json();
  buildParameters();
  loadHistory();
}

start();
