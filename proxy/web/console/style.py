"""The console's one stylesheet, served by the proxy itself (``/console/console.css``):
no CDN, no build step, works offline."""

CSS = """\
:root { font-family: system-ui, sans-serif; color: #1b1b1b; background: #f7f7f5; }
body { margin: 0; }
header { display: flex; gap: 1.5rem; align-items: center; padding: .6rem 1.2rem;
         background: #20313b; color: #fff; }
header nav { display: flex; gap: 1rem; align-items: center; flex: 1; }
header a { color: #dfe9ef; text-decoration: none; }
header a:hover { text-decoration: underline; }
header form.signout { margin-left: auto; }
main { padding: 1rem 1.5rem; max-width: 1200px; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem; }
table { border-collapse: collapse; background: #fff; width: 100%; }
th, td { border-bottom: 1px solid #e2e2de; padding: .35rem .5rem; text-align: left;
         vertical-align: top; font-size: .9rem; }
th { background: #eef0ec; }
pre { background: #fff; border: 1px solid #e2e2de; padding: .7rem; white-space: pre-wrap;
      word-break: break-word; }
dl { display: grid; grid-template-columns: 12rem 1fr; gap: .3rem 1rem; }
dt { color: #555; } dd { margin: 0; }
form.filters, form.playground, form.login { display: flex; flex-wrap: wrap; gap: .8rem;
         align-items: flex-end; margin-bottom: 1rem; }
form.playground { flex-direction: column; align-items: stretch; max-width: 800px; }
label { display: flex; flex-direction: column; font-size: .85rem; gap: .2rem; }
textarea { font: inherit; }
button { padding: .35rem .9rem; }
.action { padding: .05rem .4rem; border-radius: .3rem; color: #fff; background: #5d6d7e; }
.action.block { background: #c0392b; } .action.flag { background: #d68910; }
.action.error { background: #7d3c98; } .action.pass { background: #1e8449; }
.action.rejected { background: #34495e; } .action.unchecked { background: #a04000; }
.legend { display: flex; gap: .6rem; }
.muted { color: #666; font-size: .85rem; } p.error { color: #a93226; }
.periods a { margin-right: .8rem; } .periods a.current { font-weight: bold; }
svg.chart { width: 100%; max-width: 720px; background: #fff; border: 1px solid #e2e2de; }
svg.spark { width: 160px; height: 32px; }
.pages a { margin-right: 1rem; }
"""
