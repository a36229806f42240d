//! `GET /`: a small test page for the served flow. It is one inline document: it loads nothing and
//! talks only to this server's `/score`.

use sluice_engine::FlowDef;

/// Text safe inside HTML (element content and quoted attributes).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The page: a JSON editor prefilled with the inputs (defaults where declared), a key field when the
/// server needs one, and the answer below, streamed when the flow streams. A link can fill in the
/// inputs and run them: `/?inputs=JSON&stream=1&run=1`.
pub(super) fn html(def: &FlowDef, needs_key: bool) -> String {
    let example: serde_json::Map<String, serde_json::Value> = def
        .inputs
        .values()
        .map(|i| {
            let v = i
                .default
                .as_ref()
                .map_or(serde_json::Value::String(String::new()), |d| {
                    d.to_json_lossy()
                });
            (i.name.clone(), v)
        })
        .collect();
    let example = serde_json::to_string_pretty(&example).unwrap_or_else(|_| "{}".into());
    let key = if needs_key {
        r#"<label>API key <input id="key" type="password" autocomplete="off"></label>"#
    } else {
        ""
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{name} · sluice flow serve</title>
<style>
body{{font:15px system-ui,sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem;color:#222}}
textarea{{width:100%;height:12rem;font:13px ui-monospace,monospace}}
pre{{background:#f4f4f4;padding:.8rem;white-space:pre-wrap;word-break:break-word;min-height:3rem}}
button{{font-size:15px;padding:.3rem 1rem}} label{{margin-right:1rem}}
</style></head><body>
<h1>{name}</h1>
<p>Inputs as JSON; the answer comes from <code>POST /score</code>.</p>
<textarea id="inputs">{example}</textarea>
<p>{key}<label><input id="stream" type="checkbox"> stream</label><button id="run">Run</button></p>
<pre id="out"></pre>
<script>
const out = document.getElementById('out');
document.getElementById('run').onclick = async () => {{
  out.textContent = '';
  const headers = {{'Content-Type': 'application/json'}};
  const key = document.getElementById('key');
  if (key && key.value) headers['Authorization'] = 'Bearer ' + key.value;
  const stream = document.getElementById('stream').checked;
  headers['Accept'] = stream ? 'text/event-stream, application/json' : 'application/json';
  try {{
    const r = await fetch('/score', {{method: 'POST', headers, body: document.getElementById('inputs').value}});
    if (!(r.headers.get('content-type') || '').startsWith('text/event-stream')) {{
      out.textContent = r.status + '\n' + JSON.stringify(await r.json(), null, 2);
      return;
    }}
    const reader = r.body.getReader(); const dec = new TextDecoder(); let buf = '';
    // How many events came, and whether the stream has ended, for whoever watches the page.
    let events = 0; out.dataset.events = 0; out.dataset.state = 'streaming';
    for (;;) {{
      const {{value, done}} = await reader.read(); if (done) break;
      buf += dec.decode(value, {{stream: true}});
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {{
        const ev = buf.slice(0, i); buf = buf.slice(i + 2);
        for (const l of ev.split('\n')) if (l.startsWith('data: ')) {{
          const d = JSON.parse(l.slice(6)); const ks = Object.keys(d); out.dataset.events = ++events;
          out.textContent += ks.length === 1 && typeof d[ks[0]] === 'string' ? d[ks[0]] : JSON.stringify(d) + '\n';
        }}
      }}
    }}
    out.dataset.state = 'done';
  }} catch (e) {{ out.textContent = String(e); out.dataset.state = 'failed'; }}
}};
// `?inputs=JSON` fills the inputs, `&stream=1` ticks stream, `&run=1` runs them as the page opens.
const q = new URLSearchParams(location.search);
if (q.has('inputs')) document.getElementById('inputs').value = q.get('inputs');
if (q.get('stream') === '1') document.getElementById('stream').checked = true;
if (q.get('run') === '1') document.getElementById('run').click();
</script></body></html>
"#,
        name = escape(&def.name),
        example = escape(&example),
        key = key,
    )
}
