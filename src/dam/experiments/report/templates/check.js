window.addEventListener('load', function () {
  var problems = [];
  document.querySelectorAll('img').forEach(function (img) {
    if (!img.complete || img.naturalWidth === 0 || img.getBoundingClientRect().height < 20)
      problems.push('image not rendered: ' + (img.alt || img.src.slice(0, 40)));
  });
  document.querySelectorAll('table[data-required]').forEach(function (t) {
    if (t.querySelectorAll('tbody tr').length === 0) problems.push('empty table: ' + t.dataset.required);
  });
  document.querySelectorAll('section[data-figure]').forEach(function (s) {
    if (s.querySelectorAll('img').length === 0) problems.push('no figure in section ' + s.id);
  });
  document.body.setAttribute('data-render-check', problems.length ? problems.join(' | ') : 'ok');
  document.body.setAttribute('data-page-height', String(document.documentElement.scrollHeight));
});
