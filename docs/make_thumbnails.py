"""Template thumbnails: load each UI workflow in the real ComfyUI frontend, fit the graph in
view and save the litegraph canvas as `<workflow>.jpg` beside it (the template browser
shows /api/workflow_templates/targetclip/<name>.jpg). LiteGraph's info overlay (FPS, node
counts; the frontend's "Comfy.Graph.CanvasInfo" setting, canvas.show_info, render_info in
older LiteGraph) is switched off before the capture so it does not end up in the thumbnail.

Needs a running ComfyUI with this pack (port 8188) and a headless Chromium on it:
  chromium --headless=new --remote-debugging-port=9222 http://127.0.0.1:8188/ &
  python docs/make_thumbnails.py workflows/*.json        (needs websocket-client, pillow)
"""
import base64, io, json, sys, time, urllib.request
import websocket
from PIL import Image
pages = [p for p in json.load(urllib.request.urlopen("http://127.0.0.1:9222/json")) if p["type"] == "page"]
ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
n = [0]
def call(method, **params):
    n[0] += 1; ws.send(json.dumps({"id": n[0], "method": method, "params": params}))
    while True:
        msg = json.loads(ws.recv())
        if msg.get("id") == n[0]: return msg
for path in sys.argv[1:]:
    wf = open(path).read()
    js = f"""(async () => {{ const app = window.app;
      await app.extensionManager?.setting?.set?.("Comfy.Graph.CanvasInfo", false);
      await app.loadGraphData({wf});
      app.canvas.show_info = false; app.canvas.render_info = false;  // no FPS / info overlay in the picture
      const nodes = app.graph._nodes; let x0=1e9,y0=1e9,x1=-1e9,y1=-1e9;
      for (const n of nodes) {{ const [x,y]=n.pos, [w,h]=n.size; x0=Math.min(x0,x); y0=Math.min(y0,y-30); x1=Math.max(x1,x+w); y1=Math.max(y1,y+h); }}
      const c = app.canvas.canvas, ds = app.canvas.ds, pad = 20;
      const s = Math.min((c.width - 2*pad)/(x1-x0), (c.height - 2*pad)/(y1-y0));
      ds.scale = s; ds.offset[0] = pad/s - x0; ds.offset[1] = pad/s - y0;
      app.canvas.setDirty(true, true); app.canvas.draw(true, true);
      await new Promise(r => setTimeout(r, 500)); app.canvas.draw(true, true);
      return c.toDataURL('image/png'); }})()"""
    r = call("Runtime.evaluate", expression=js, awaitPromise=True, returnByValue=True)
    data = r["result"]["result"]["value"].split(",", 1)[1]
    im = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    im.thumbnail((768, 768), Image.LANCZOS)
    out = path[:-5] + ".jpg"
    im.save(out, quality=85)
    print(out, im.size)
