"""Report, stage 0: the inline stylesheet and script (no external resources, ever)."""

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 18px;color:#222}
h1{font-size:22px;margin:18px 0 2px}h2{border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin:0}.headline{font-size:17px}
table{border-collapse:collapse;margin:8px 0;width:100%}th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}
th{cursor:pointer;background:#f6f6f6}td.ci{color:#777;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:8px}.chart{margin:0 0 8px;border:1px solid #eee;padding:4px;max-width:100%;box-sizing:border-box}
.chart svg{display:block;max-width:100%;height:auto}
.chart figcaption{font-size:11px}.key{margin-right:10px;white-space:nowrap}.key i{display:inline-block;width:10px;height:10px;margin-right:3px}
.key i.dash{width:16px;height:3px;vertical-align:middle}.chart .note{color:#666}
svg .axis{stroke:#999}svg .axis.zero{stroke:#555}svg .grid{stroke:#eee}svg .tick{font-size:10px;fill:#555}
svg .tick.sub{fill:#888}svg .atitle{font-size:10px;fill:#333}svg .ctitle{font-size:12px;font-weight:600}
svg .whisker{stroke:#333;stroke-width:1.2}svg .break{stroke:#555;fill:none;stroke-width:1.2}
tr.small td{color:#999}
section{overflow-x:auto}code.cid{font-size:12px;color:#555}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:8px}
.card{border:1px solid #ddd;border-left:5px solid #999;padding:6px;font-size:12px}
.card.survived{border-left-color:#2ca02c}.card.blurred{border-left-color:#ff7f0e}
.card.dead{border-left-color:#d62728}.card.new{border-left-color:#1f77b4}
.ctx{display:flex;gap:6px;margin-top:4px}.side{flex:1;font-family:monospace;white-space:pre-wrap;overflow-wrap:anywhere}
.side i{color:#888;margin-right:4px}.tok{border-radius:2px}
.filters{margin:6px 0}input[type=search]{padding:3px 6px;min-width:220px}
pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}
"""

JS = """
(function(){
  function cellValue(row, i){var t=row.children[i].textContent.trim();var n=parseFloat(t);return isNaN(n)?t.toLowerCase():n;}
  document.querySelectorAll('table.sortable th').forEach(function(th){
    th.addEventListener('click',function(){
      var table=th.closest('table'),body=table.tBodies[0],i=+th.dataset.col,asc=th.dataset.asc!=='1';
      var rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){var x=cellValue(a,i),y=cellValue(b,i);return (x>y?1:x<y?-1:0)*(asc?1:-1);});
      rows.forEach(function(r){body.appendChild(r);});th.dataset.asc=asc?'1':'0';
    });
  });
  var f=document.getElementById('concept-filter');
  if(f){f.addEventListener('input',function(){var q=f.value.toLowerCase();
    document.querySelectorAll('#concept-table tbody tr').forEach(function(r){
      r.style.display=r.textContent.toLowerCase().indexOf(q)>=0?'':'none';});});}
  document.querySelectorAll('input[data-filter]').forEach(function(inp){
    inp.addEventListener('input',function(){var q=inp.value.toLowerCase();
      document.querySelectorAll('#'+inp.dataset.filter+' tbody tr').forEach(function(r){
        r.style.display=r.textContent.toLowerCase().indexOf(q)>=0?'':'none';});});});
  function filterCards(){
    var v=(document.getElementById('verdict-filter')||{}).value||'';
    var d=(document.getElementById('domain-filter')||{}).value||'';
    var c=((document.getElementById('feature-concept')||{}).value||'').toLowerCase();
    document.querySelectorAll('.card').forEach(function(card){
      var ok=(!v||card.dataset.verdict===v)&&(!d||card.dataset.domain===d)&&(!c||card.dataset.concept.toLowerCase().indexOf(c)>=0);
      card.style.display=ok?'':'none';});
  }
  ['verdict-filter','domain-filter','feature-concept'].forEach(function(id){
    var el=document.getElementById(id);if(el){el.addEventListener('input',filterCards);el.addEventListener('change',filterCards);}});
})();
"""
