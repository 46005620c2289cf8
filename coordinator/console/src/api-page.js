// The API page: Redoc (served from the coordinator, no CDN) renders the
// coordinator's own OpenAPI document, which needs no token.
/* global Redoc */
const el = document.getElementById('redoc-container');
Redoc.init('/api/v1/openapi.json', {
  hideDownloadButton: false,
  disableSearch: false,
  expandResponses: '200,201,202',
  theme: { typography: { fontFamily: 'system-ui, sans-serif', headings: { fontFamily: 'system-ui, sans-serif' } } },
}, el, (err) => {
  const p = document.getElementById('redoc-loading');
  if (err && p) p.textContent = 'The API document could not be rendered: ' + err;
  document.body.dataset.redoc = err ? 'failed' : 'ready';
});
