(function(){
'use strict';
var D = JSON.parse(document.getElementById('report-data').textContent);
function el(tag, attrs, text){ var n = document.createElement(tag); if (attrs) for (var k in attrs) n.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) n.textContent = String(text); return n; }
function fmt(v){ if (v === null || v === undefined) return ''; if (typeof v === 'number' && !Number.isInteger(v)) return String(+v.toPrecision(4));
  return String(v); }
function cmp(a, b){ var an = a === null || a === undefined || a === '', bn = b === null || b === undefined || b === '';
  if (an || bn) return an && bn ? 0 : an ? 1 : -1;
  if (typeof a === 'number' && typeof b === 'number') return a - b; return String(a).localeCompare(String(b), undefined, {numeric: true}); }
function pager(host, state, total, redraw){
  host.textContent = ''; var pages = Math.max(1, Math.ceil(total / state.size)); state.page = Math.min(state.page, pages - 1);
  var first = el('button', null, '«'), prev = el('button', null, '‹'), next = el('button', null, '›'), last = el('button', null, '»');
  first.onclick = function(){ state.page = 0; redraw(); }; prev.onclick = function(){ state.page = Math.max(0, state.page - 1); redraw(); };
  next.onclick = function(){ state.page = Math.min(pages - 1, state.page + 1); redraw(); }; last.onclick = function(){ state.page = pages - 1; redraw(); };
  var start = total ? state.page * state.size + 1 : 0, end = Math.min(total, (state.page + 1) * state.size);
  var sizes = el('select', {'class': 'page-size', 'aria-label': 'rows per page'});
  [25, 50, 100, 500, 'all'].forEach(function(s){ var o = el('option', {value: s}, s === 'all' ? 'all' : s + ' per page');
    if ((s === 'all' && state.size >= 1e9) || s === state.size) o.selected = true; sizes.appendChild(o); });
  sizes.onchange = function(){ state.size = sizes.value === 'all' ? 1e9 : +sizes.value; state.page = 0; redraw(); };
  [first, prev].forEach(function(b){ b.disabled = state.page === 0; host.appendChild(b); });
  host.appendChild(el('span', {'class': 'range'}, start + '–' + end + ' of ' + total));
  [next, last].forEach(function(b){ b.disabled = state.page >= pages - 1; host.appendChild(b); });
  host.appendChild(sizes);
  return [start ? start - 1 : 0, end];
}
function DataTable(host, columns, rowsFn, opts){
  opts = opts || {}; var state = {page: 0, size: opts.size || D.page_size || 50, key: null, desc: false};
  var top = el('div', {'class': 'pager'}), table = el('table'), thead = el('thead'), tbody = el('tbody');
  var filter = null;
  if (opts.filter) { filter = el('input', {type: 'search', placeholder: 'filter', 'class': 'table-filter'});
    filter.oninput = function(){ state.page = 0; redraw(); }; host.appendChild(filter); }
  host.appendChild(top); table.appendChild(thead); table.appendChild(tbody); host.appendChild(table);
  var tr = el('tr'); columns.forEach(function(c){ var th = el('th', {'data-key': c}, c.replace(/^meta_/, ''));
    th.onclick = function(){ state.desc = state.key === c ? !state.desc : false; state.key = c; state.page = 0; redraw(); }; tr.appendChild(th); });
  thead.appendChild(tr);
  function rows(){ var r = rowsFn(); if (filter && filter.value) { var q = filter.value.toLowerCase();
      r = r.filter(function(x){ return columns.some(function(c){ return fmt(x[c]).toLowerCase().indexOf(q) >= 0; }); }); }
    if (state.key) { var k = state.key, s = state.desc ? -1 : 1; r = r.slice().sort(function(a, b){ return s * cmp(a[k], b[k]); }); }
    return r; }
  // a numeric column without a value (a NaN upstream, a metric that does not apply) says n/a
  var numeric = {}; columns.forEach(function(c){ numeric[c] = rows().some(function(x){ return typeof x[c] === 'number'; }); });
  function redraw(){
    var r = rows(), span = pager(top, state, r.length, redraw); tbody.textContent = '';
    Array.prototype.forEach.call(thead.rows[0].cells, function(th){ th.className = th.dataset.key === state.key ? (state.desc ? 'sorted-desc' : 'sorted-asc') : ''; });
    r.slice(span[0], span[1]).forEach(function(x){
      var row = el('tr', x.verdict ? {'class': x.verdict} : null);
      columns.forEach(function(c){ var td = el('td', null, x[c] === null && numeric[c] ? 'n/a' : fmt(x[c]));
        if (c === 'verdict') td.className = 'v';
        if (c === 'unit_id' && D.details[x[c]]) { td.className = 'link'; td.onclick = function(){ showDetail(x[c]); }; }
        row.appendChild(td); });
      tbody.appendChild(row); });
    if (opts.onchange) opts.onchange(r);
  }
  this.redraw = redraw; redraw();
}
var unitFilter = document.getElementById('unit-filter'), verdictFilter = document.getElementById('verdict-filter');
function filteredUnits(){
  var q = (unitFilter.value || '').toLowerCase(), v = verdictFilter.value;
  return D.units.filter(function(u){ if (v && u.verdict !== v) return false; if (!q) return true;
    return D.columns.some(function(c){ return fmt(u[c]).toLowerCase().indexOf(q) >= 0; }); });
}
var galleryState = {page: 0, size: D.page_size || 50}, galleryRows = D.units, ownContrast = document.getElementById('own-contrast');
ownContrast.addEventListener('change', function(){ drawGallery(); });
function drawGallery(){
  var host = document.getElementById('gallery-cards'), span = pager(document.getElementById('gallery-pager'), galleryState, galleryRows.length, drawGallery);
  host.textContent = '';
  var meta = D.columns.filter(function(c){ return c.indexOf('meta_') === 0; });
  galleryRows.slice(span[0], span[1]).forEach(function(u){
    var card = el('div', {'class': 'card', 'data-unit': u.unit_id, tabindex: 0});
    var head = el('div'); head.appendChild(el('span', {'class': 'badge ' + u.verdict}, u.verdict)); head.appendChild(document.createTextNode(' '));
    head.appendChild(el('span', {'class': 'id'}, u.unit_id)); card.appendChild(head);
    var src = (ownContrast.checked && D.thumbnails_own[u.unit_id]) || D.thumbnails[u.unit_id];
    if (src) card.appendChild(el('img', {src: src, alt: 'unit ' + u.unit_id, loading: 'lazy', width: 160, height: 160}));
    else card.appendChild(el('div', {'class': 'noimg'}, 'no image'));
    card.appendChild(el('div', null, (u.object_count === null || u.object_count === undefined ? '–' : u.object_count) + ' objects · ' +
      meta.map(function(c){ return fmt(u[c]); }).filter(Boolean).join(' · ')));
    var issues = fmt(u.issues); if (issues) { var ul = el('ul'); issues.split(';').forEach(function(i){ ul.appendChild(el('li', null, i)); }); card.appendChild(ul); }
    card.onclick = function(){ showDetail(u.unit_id); };
    card.onkeydown = function(ev){ if (ev.key === 'Enter') showDetail(u.unit_id); };
    host.appendChild(card);
  });
}
function kvTable(pairs){ var t = el('table', {'class': 'kv'}); pairs.forEach(function(p){ if (p[1] === null || p[1] === undefined || p[1] === '') return;
  var r = el('tr'); r.appendChild(el('th', null, p[0])); r.appendChild(el('td', null, p[1] === null ? 'n/a' : fmt(p[1]))); t.appendChild(r); }); return t; }
function list(title, items, line){ var box = el('div'); if (!items || !items.length) return box; box.appendChild(el('h4', null, title));
  var ul = el('ul'); items.forEach(function(i){ ul.appendChild(el('li', null, line(i))); }); box.appendChild(ul); return box; }
function showDetail(uid){
  var d = D.details[uid], u = D.units.find(function(x){ return x.unit_id === uid; }), body = document.getElementById('detail-body');
  body.textContent = '';
  // previous / next within the units the filters show (arrow keys too)
  var shown = filteredUnits().map(function(x){ return x.unit_id; }), at = shown.indexOf(uid);
  var nav = el('div', {'class': 'detail-nav'});
  [['‹ previous', at - 1, 'detail-prev'], ['next ›', at + 1, 'detail-next']].forEach(function(b){
    var button = el('button', {id: b[2]}, b[0]); button.disabled = at < 0 || b[1] < 0 || b[1] >= shown.length;
    button.onclick = function(){ showDetail(shown[b[1]]); }; nav.appendChild(button); });
  nav.appendChild(el('span', {'class': 'muted'}, at >= 0 ? ' ' + (at + 1) + ' of ' + shown.length : ''));
  body.appendChild(nav);
  var h = el('h3'); h.appendChild(el('span', {'class': 'badge ' + u.verdict}, u.verdict)); h.appendChild(document.createTextNode(' ' + uid)); body.appendChild(h);
  var src = d.image || D.thumbnails[uid];
  if (src) body.appendChild(el('img', {src: src, alt: 'detail of unit ' + uid, id: 'detail-image'}));
  if (!d.image) body.appendChild(el('p', {'class': 'muted'}, 'Detail images are embedded for reports of up to report.detail_images_max_units units; the full overlay is ' + d.overlay_file));
  body.appendChild(el('p', {'class': 'muted'}, 'Left: the input channel in the run\'s shared contrast (a dim field looks dim); ' +
    'right: segmentation outlines on the field\'s own contrast. ' +
    (d.scale_bar ? 'Scale bar (white, bottom right): ' + d.scale_bar + '.' : 'No scale bar: the image has no pixel size.')));
  if (d.summary) body.appendChild(el('blockquote', null, d.summary));
  body.appendChild(kvTable([['source', d.source], ['scene', d.scene], ['image', d.size], ['pixel size', d.pixel_size], ['channels', d.channels], ['reviewer', d.reviewer],
    ['review status', d.status], ['LLM verdict', d.llm_verdict], ['rules verdict', d.rules_verdict],
    ['count: segmented / estimated by the LLM', d.count_check && d.count_check.estimated !== null ? fmt(d.count_check.segmented) + ' / ' + fmt(d.count_check.estimated) : null]]
    .concat(Object.keys(d.metrics).map(function(k){ return [k, d.metrics[k] === null ? 'n/a' : d.metrics[k]]; }))
    .concat(D.columns.filter(function(c){ return c.indexOf('meta_') === 0; }).map(function(c){ return [c.slice(5), u[c]]; }))));
  body.appendChild(list('Issues', d.issues, function(i){ return i.type + ' (' + i.severity + '): ' + i.evidence; }));
  body.appendChild(list('Flags (reviewer vs numbers)', d.flags, function(f){ return f.check + ': reviewer says ' + f.llm_says + ' / numbers say ' + f.numbers_say; }));
  body.appendChild(list('Suggested actions', d.actions, function(a){ return a.action + ': ' + a.detail + (a.decided_by ? ' (' + a.decided_by + ')' : ''); }));
  if (d.critique) body.appendChild(list('Critique of the segmentation', [d.critique], function(c){ return 'merged ' + c.merged + ', split ' + c.split + ', missed ' + c.missed + ', artefacts ' + c.artefacts + '. ' + c.comment; }));
  body.appendChild(list('Answers', d.answers, function(a){ return a.question + ' — ' + a.answer + ': ' + a.evidence; }));
  if (d.refinement) body.appendChild(list('Refinement of the segmentation by the critique', [d.refinement], function(r){ return r; }));
  if (d.human) body.appendChild(list('Corrected by a person', [d.human], function(h){ return 'verdict ' + h.verdict + ' (machine: ' +
    h.machine_verdict + '; overruled: ' + h.overruled + ')' + (h.comment ? ': ' + h.comment : ''); }));
  body.appendChild(correctionForm(uid, d, u));
  var dlg = document.getElementById('detail'); if (!dlg.open) dlg.showModal();
}
document.getElementById('detail-close').onclick = function(){ document.getElementById('detail').close(); };
document.addEventListener('keydown', function(ev){
  if (!document.getElementById('detail').open || /INPUT|SELECT|TEXTAREA/.test((ev.target || {}).tagName || '')) return;
  var b = document.getElementById(ev.key === 'ArrowLeft' ? 'detail-prev' : ev.key === 'ArrowRight' ? 'detail-next' : '');
  if (b && !b.disabled) { ev.preventDefault(); b.click(); } });
document.getElementById('detail').addEventListener('click', function(ev){ if (ev.target === this) this.close(); });
var tables = {};
document.querySelectorAll('.dt[data-table]').forEach(function(host){
  var name = host.dataset.table;
  if (name === 'units') tables.units = new DataTable(host, D.columns, filteredUnits, {onchange: function(r){ galleryRows = r; galleryState.page = 0; drawGallery(); }});
  else { var rows = D[name] || []; tables[name] = new DataTable(host, rows.length ? Object.keys(rows[0]) : [], function(){ return rows; }, {filter: true}); }
});
function refilter(){ tables.units.redraw(); }
unitFilter.addEventListener('input', refilter); verdictFilter.addEventListener('change', refilter);
// -- corrections by a person: kept in this browser (localStorage) until exported as a file for review.corrections
var STORE = 'snakescope-corrections:' + D.dataset, memory = {};
function loadPage(){ try { return JSON.parse(window.localStorage.getItem(STORE) || '{}'); } catch (err) { return memory; } }
function savePage(c){ memory = c; try { window.localStorage.setItem(STORE, JSON.stringify(c)); } catch (err) { /* memory only */ } updateCount(); }
function runCorrections(){ var out = {}; Object.keys(D.details).forEach(function(uid){ var h = D.details[uid].human;
  if (h) out[uid] = {unit_id: uid, verdict: h.verdict, issues: h.issues, comment: h.comment, machine_verdict: h.machine_verdict}; }); return out; }
function updateCount(){ var n = Object.keys(loadPage()).length, r = Object.keys(runCorrections()).length;
  document.getElementById('corrections-count').textContent = n + ' correction(s) made in this page' + (r ? ', ' + r + ' from this run\'s file' : ''); }
function correctionForm(uid, d, u){
  var box = el('fieldset', {id: 'correction-form'}), mine = loadPage()[uid] || (d.human ? runCorrections()[uid] : null);
  box.appendChild(el('legend', null, 'Your review of this unit'));
  var verdict = el('select', {id: 'correction-verdict'});
  [['', 'keep the machine\'s verdict (' + u.verdict + ')'], ['pass', 'pass'], ['warn', 'warn'], ['fail', 'fail']].forEach(function(o){
    var opt = el('option', {value: o[0]}, o[1]); if (mine && mine.verdict === o[0]) opt.selected = true; verdict.appendChild(opt); });
  var issues = el('input', {id: 'correction-issues', size: 30, placeholder: 'issues, comma-separated (e.g. debris)'});
  issues.value = mine && mine.issues ? mine.issues.join(', ') : '';
  var comment = el('input', {id: 'correction-comment', size: 50, placeholder: 'comment (e.g. actually fine)'});
  comment.value = mine ? mine.comment || '' : '';
  var save = el('button', {id: 'correction-save'}, 'Save correction'), state = el('span', {'class': 'muted', id: 'correction-state'});
  save.onclick = function(){ var all = loadPage();
    if (!verdict.value) { delete all[uid]; state.textContent = 'no correction'; }
    else { all[uid] = {unit_id: uid, verdict: verdict.value, comment: comment.value.trim(), machine_verdict: d.human ? d.human.machine_verdict : u.verdict,
      issues: issues.value.split(',').map(function(s){ return s.trim(); }).filter(function(s){ return s; }),
      created: new Date().toISOString()}; state.textContent = 'saved in this browser; export to use it'; }
    savePage(all); };
  [verdict, issues, comment, save, state].forEach(function(n){ box.appendChild(n); box.appendChild(document.createTextNode(' ')); });
  return box;
}
document.getElementById('corrections-export').onclick = function(){
  var merged = runCorrections(), page = loadPage(); Object.keys(page).forEach(function(k){ merged[k] = page[k]; });
  var doc = {format: 'snakescope-corrections', version: 1, dataset: D.dataset, exported: new Date().toISOString(),
             corrections: Object.keys(merged).sort().map(function(k){ return merged[k]; })};
  var url = URL.createObjectURL(new Blob([JSON.stringify(doc, null, 1)], {type: 'application/json'}));
  var a = el('a', {href: url, download: 'corrections-' + (D.dataset || 'snakescope') + '.json'}); document.body.appendChild(a); a.click();
  setTimeout(function(){ URL.revokeObjectURL(url); a.remove(); }, 1000); };
document.getElementById('corrections-clear').onclick = function(){ savePage({}); };
updateCount();
window.snakescopeReport = {units: D.units.length, showDetail: showDetail};
})();
