"""The HTML of ``fastsrnn report``'s pages (fastsrnn/tools/report.py gathers what they show).

Self-contained: inline CSS, a small self-check script (it records, in a hidden element, whether
every <audio> decoded and every <img> loaded, for tests/test_report_browser.py), no fonts, no
network; text goes through html.escape (`_e`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;
color:#222;background:#fafafa}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
.box{background:#fff;border:1px solid #ccc;border-radius:6px;padding:.8em 1em;margin:1em 0}
.rec{border-color:#2a7a2a;background:#f2faf2}.none{border-color:#b36b00;background:#fff8ec}
code,pre{background:#eee;padding:.15em .3em;border-radius:3px;font-size:.95em}pre{padding:.6em;overflow-x:auto}
table{border-collapse:collapse}td,th{padding:.2em .7em;border-bottom:1px solid #ddd;text-align:left}
.clips{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:1em}
.clip{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em}
.clip img{width:100%;height:auto;display:block}.clip audio{width:100%;margin:.3em 0}
.v{font-weight:bold;padding:.1em .4em;border-radius:3px;color:#fff;background:#777}
.v-ok{background:#2a7a2a}.v-bad{background:#b02a2a}.v-silent{background:#777}
.muted{color:#666;font-size:.9em}
"""

# Records, once the page has loaded, whether every player and picture loaded (for tests and for the
# curious: see the hidden #selfcheck element), and any script or resource error.
SELFCHECK = """
(function(){var errors=[];
window.addEventListener('error',function(e){var t=e.target||{};
errors.push(String(e.message||('failed to load '+(t.currentSrc||t.src||t.tagName))));},true);
function write(done){var el=document.getElementById('selfcheck');
var audio=[].map.call(document.querySelectorAll('audio'),function(a){return {src:a.getAttribute('src'),
readyState:a.readyState,duration:a.duration,error:a.error?a.error.code:null};});
var images=[].map.call(document.images,function(i){return {src:i.getAttribute('src'),naturalWidth:i.naturalWidth};});
el.textContent=JSON.stringify({done:done,audio:audio,images:images,errors:errors});el.setAttribute('data-done',done?'1':'0');}
window.addEventListener('load',function(){var t0=Date.now();(function poll(){
var waiting=[].some.call(document.querySelectorAll('audio'),function(a){return a.readyState<1&&!a.error;});
if(!waiting||Date.now()-t0>6000){write(true);}else{write(false);setTimeout(poll,100);}})();});})();
"""


def _e(x) -> str:
    import html

    return html.escape(str(x), quote=True)


def _bits(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.4f}"


def _verdict(v: str) -> str:
    cls = "v-ok" if v == "ok" else "v-silent" if v == "silent" else "v-bad"
    return f'<span class="v {cls}">{_e(v)}</span>'


def _clip_card(c, rel) -> str:  # c: a fastsrnn.tools.report.Clip (report.py imports this module)
    pic = f'<img src="{rel(c.picture)}" alt="waveform and spectrogram of {_e(c.path.name)}">' if c.picture else ""
    close = "" if c.closeness is None else f" closeness {c.closeness:.2f}"
    player = (f'<audio controls preload="metadata" src="{rel(c.path)}"></audio>' if c.path.is_file()
              else '<p class="muted">(file missing)</p>')
    return (f'<div class="clip"><div><b>{_e(c.path.name)}</b> {_verdict(c.verdict)}{_e(close)}</div>'
            f"{player}{pic}</div>")


def _document(title: str, body: List[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body)
            + f'\n<pre id="selfcheck" hidden></pre>\n<script>{SELFCHECK}</script>\n</body></html>\n')


def _judged(against: Optional[str]) -> str:
    return (f"Verdicts and closeness are relative to the album {_e(against)}." if against else
            "No album to compare with (give --against DATA): verdicts are absolute "
            "(silent / noise / trap / ok) and there is no closeness.")


def _skipped(skipped: List[str]) -> List[str]:
    """A box listing the paths that leave the folder (report.py skipped them: never read or written)."""
    if not skipped:
        return []
    items = "".join(f"<li>{_e(s)}</li>" for s in skipped)
    return [f'<div class="box none"><b>Skipped {len(skipped)} path(s) outside this folder</b> (never read or '
            f"written: the report reads and writes only inside its folder):<ul>{items}</ul></div>"]


def run_html(run: Path, rel, steps, best, why, where, cmd, kept, curves, against, skipped=()) -> str:
    body = [f"<h1>Training run: {_e(run.resolve().name)}</h1>",
            f'<p class="muted">{_e(run.resolve())} &middot; {_judged(against)}</p>', *_skipped(list(skipped))]
    if curves:
        body.append(f'<img src="{rel(curves)}" alt="training curves" style="max-width:100%">')
    if best:
        body.append(f'<div class="box rec"><b>Recommended: step {best.step}.</b> {_e(why)}<br>{_e(where)}'
                    + (f"<pre>{_e(cmd)}</pre>" if cmd else "") + "</div>")
    else:
        body.append(f'<div class="box none"><b>No recommended checkpoint.</b> {_e(why)}</div>')
    kept_by_step = {s: n for n, s in sorted(kept.items(), reverse=True)}
    rows = "".join(
        f"<tr><td><a href=\"#step-{s.step}\">{s.step}</a></td><td>{_bits(s.train_bits)}</td>"
        f"<td>{_bits(s.valid_bits)}{'' if s.valid_step in (None, s.step) else f' (step {s.valid_step})'}</td>"
        f"<td>{len(s.clips) - len(s.bad)} / {len(s.clips)}</td><td>{_e(kept_by_step.get(s.step, ''))}</td></tr>"
        for s in steps)
    body.append("<table><tr><th>step</th><th>train NLL</th><th>valid NLL</th><th>clips not noise-like/trapped</th>"
                f"<th>kept as</th></tr>{rows}</table>" if steps else "<p>No steps recorded yet.</p>")
    for s in reversed(steps):
        body.append(f'<h2 id="step-{s.step}">Step {s.step}</h2><p>train {_bits(s.train_bits)}, valid '
                    f"{_bits(s.valid_bits)} bits/sample" + (f" (at step {s.valid_step})" if s.valid_step not in
                                                           (None, s.step) else "") + "</p>")
        body.append('<div class="clips">' + "".join(_clip_card(c, rel) for c in s.clips) + "</div>" if s.clips
                    else '<p class="muted">No clips at this step.</p>')
    return _document(f"fastsrnn report: {run.resolve().name}", body)


def generation_html(gen: Path, rel, clips, settings, in_progress, against, skipped=()) -> str:
    body = [f"<h1>Generation: {_e(gen.resolve().name)}</h1>",
            f'<p class="muted">{_e(gen.resolve())} &middot; {_judged(against)}</p>', *_skipped(list(skipped))]
    if in_progress:
        body.append('<div class="box none">This generation is not finished: these are its part files.</div>')
    body.append('<div class="clips">' + "".join(_clip_card(c, rel) for c in clips) + "</div>" if clips
                else "<p>No sequences in this folder yet.</p>")
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(json.dumps(v) if isinstance(v, (dict, list)) else v)}</td></tr>"
                   for k, v in settings.items())
    body.append(f"<h2>Settings (generation.json)</h2><table>{rows}</table>")
    return _document(f"fastsrnn report: {gen.resolve().name}", body)
