"""Template thumbnails: load each UI workflow in the real ComfyUI frontend, fit the graph (nodes with their title
bars and badges, groups) in view, save the litegraph canvas cropped to the graph as `<workflow>.jpg` beside it, at
most 768 px on the long side (the template browser shows /api/workflow_templates/targetclip/<name>.jpg). LiteGraph's
info overlay (FPS, node counts; the frontend's "Comfy.Graph.CanvasInfo" setting, canvas.show_info, render_info in
older LiteGraph) is switched off so it does not end up in the thumbnail, and so is the low-quality level of detail
(plain boxes when zoomed out). Each workflow opens under its own name and the earlier tabs are closed (no "Unsaved
Workflow" tabs); `--screenshot OUT.png` also saves a page screenshot of the last one, the first-run dialog and the
minimap closed, the graph fitted clear of the sidebar, tabs and toolbars.
DOM widgets (text boxes, video previews) lie over the canvas, not in it: they are empty in the thumbnails.

Needs a running ComfyUI with this pack (port 8188; docs/run_workflows.py shows how to link it and its models)
and a headless Chromium on it:
  chromium --headless=new --no-sandbox --disable-gpu --window-size=1600,900 --remote-debugging-port=9222 \\
      --user-data-dir=$(mktemp -d) http://127.0.0.1:8188/ &
  python docs/make_thumbnails.py workflows/*.json [--screenshot docs/workflow_<name>.png]  (websocket-client, pillow)
"""
import base64, io, json, os, sys, urllib.request
import websocket
from PIL import Image
args = sys.argv[1:]
shot = args.pop(args.index("--screenshot") + 1) if "--screenshot" in args else None
args = [a for a in args if a != "--screenshot"]
pages = [p for p in json.load(urllib.request.urlopen("http://127.0.0.1:9222/json")) if p["type"] == "page"]
ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=120, suppress_origin=True)
n = [0]
def call(method, **params):
    n[0] += 1; ws.send(json.dumps({"id": n[0], "method": method, "params": params}))
    while True:
        msg = json.loads(ws.recv())
        if msg.get("id") == n[0]: return msg
def evaluate(js):
    r = call("Runtime.evaluate", expression=js, awaitPromise=True, returnByValue=True)["result"]
    if "exceptionDetails" in r: raise RuntimeError(json.dumps(r["exceptionDetails"])[:2000])
    return r["result"].get("value")
FIT = """async ([l, t, r, b]) => { const app = window.app, sleep = ms => new Promise(res => setTimeout(res, ms));
  let x0=1e9,y0=1e9,x1=-1e9,y1=-1e9; const box = (x,y,w,h) => { x0=Math.min(x0,x); y0=Math.min(y0,y); x1=Math.max(x1,x+w); y1=Math.max(y1,y+h); };
  for (const n of app.graph._nodes) box(n.pos[0], n.pos[1]-55, n.size[0], n.size[1]+55);  // title bar and badge above pos
  for (const g of app.graph._groups ?? []) box(...(g._bounding ?? g.bounding));
  const c = app.canvas.canvas, ds = app.canvas.ds, dpr = window.devicePixelRatio || 1;
  const s = Math.min((c.width/dpr - l - r)/(x1-x0), (c.height/dpr - t - b)/(y1-y0));
  ds.scale = s; ds.offset[0] = l/s - x0; ds.offset[1] = t/s - y0;
  const loading = n => n.widgets?.some(w => w.name === "upload") && !(n.imgs?.length && n.imgs.every(im => im.complete));
  for (let i = 0; i < 50 && app.graph._nodes.some(loading); i++) await sleep(100);  // Load Image previews
  app.canvas.setDirty(true, true); app.canvas.draw(true, true); await sleep(800); app.canvas.draw(true, true);
  await sleep(50);  // image previews are drawn in a microtask after draw()
  return [c.toDataURL('image/png'), [0, 0, Math.ceil(((x1-x0)*s + l + r)*dpr), Math.ceil(((y1-y0)*s + t + b)*dpr)]]; }"""
for path in args:
    name = os.path.basename(path)[:-5]
    data, crop = evaluate(f"""(async () => {{ const app = window.app, set = app.extensionManager?.setting;
      for (const [k, v] of [["Comfy.Graph.CanvasInfo", false], ["LiteGraph.Canvas.MinFontSizeForLOD", 0], ["Comfy.Minimap.Visible", false]])
        await set?.set?.(k, v);
      await app.loadGraphData({open(path).read()}, true, true, {json.dumps(name)});
      const wf = app.extensionManager?.workflow;  // close the tabs of earlier loads (and the first "Unsaved Workflow")
      for (const w of [...(wf?.openWorkflows ?? [])]) if (w !== wf.activeWorkflow) await wf.closeWorkflow(w, {{warnIfUnsaved: false}});
      app.canvas.show_info = false; app.canvas.render_info = false;  // no FPS / info overlay in the picture
      app.canvas.min_font_size_for_lod = 0;  // text and widgets at any zoom, not the low-quality boxes
      return ({FIT})([16, 16, 16, 16]); }})()""")
    im = Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1]))).convert("RGB").crop(crop)
    im.thumbnail((768, 768), Image.LANCZOS)
    im.save(path[:-5] + ".jpg", quality=85)
    print(path[:-5] + ".jpg", im.size)
if shot:  # the page as a user sees it: first-run dialog closed (its close button, top right), graph clear of the chrome
    evaluate(f"""(async () => {{ for (const b of document.querySelectorAll('[role=dialog] button'))
        if (b.getBoundingClientRect().x > innerWidth * 0.8) b.click();
      await new Promise(res => setTimeout(res, 800)); await ({FIT})([80, 110, 20, 70]); }})()""")
    open(shot, "wb").write(base64.b64decode(call("Page.captureScreenshot", format="png")["result"]["data"]))
    print(shot)
