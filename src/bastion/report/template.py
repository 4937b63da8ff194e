"""The HTML report's Jinja2 template: one self-contained page (inline CSS, figures as data URIs, no scripts)."""

CSS = """
:root { --fg:#0f172a; --muted:#475569; --line:#e2e8f0; --bg:#f8fafc; --card:#ffffff; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg);
       background:var(--bg); }
header { background:#0f172a; color:#f8fafc; padding:20px 32px; }
header h1 { margin:0 0 4px; font-size:22px; }
header p { margin:0; color:#cbd5e1; }
nav { padding:8px 32px; background:#1e293b; }
nav a { color:#e2e8f0; margin-right:16px; text-decoration:none; font-size:13px; }
main { max-width:1100px; margin:0 auto; padding:16px 32px 48px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:16px 20px;
          margin:16px 0; }
h2 { margin:0 0 8px; font-size:18px; }
h3 { font-size:15px; margin:16px 0 6px; }
table { border-collapse:collapse; width:100%; margin:8px 0; font-size:13px; }
th, td { border-bottom:1px solid var(--line); padding:5px 8px; text-align:left; vertical-align:top; }
th { background:#f1f5f9; font-weight:600; }
.grade { display:inline-block; min-width:34px; text-align:center; font-weight:700; border-radius:6px;
         padding:2px 8px; color:#fff; }
.grade-A { background:#16a34a; } .grade-B { background:#65a30d; } .grade-C { background:#d97706; }
.grade-D { background:#dc2626; } .grade-F { background:#7f1d1d; } .grade-NA { background:#94a3b8; }
.big { font-size:34px; padding:6px 18px; }
.sev { display:inline-block; border-radius:4px; padding:0 6px; color:#fff; font-size:12px; font-weight:600; }
.sev-critical { background:#7f1d1d; } .sev-high { background:#dc2626; } .sev-medium { background:#d97706; }
.sev-low { background:#0284c7; } .sev-info { background:#94a3b8; }
.pass { color:#16a34a; font-weight:600; } .fail { color:#dc2626; font-weight:600; }
.muted { color:var(--muted); }
figure { margin:12px 0; } figure img { max-width:100%; border:1px solid var(--line); border-radius:6px; }
figcaption { color:var(--muted); font-size:12px; }
pre { background:#f1f5f9; padding:10px; border-radius:6px; overflow:auto; font-size:12px; }
details summary { cursor:pointer; color:var(--muted); }
.warn { background:#fef3c7; border:1px solid #f59e0b; padding:8px 12px; border-radius:6px; }
h4 { font-size:14px; margin:14px 0 4px; }
.probe { border-top:1px solid var(--line); margin-top:10px; }
.transcript { border:1px solid var(--line); border-radius:6px; padding:6px 10px; margin:8px 0; }
.transcript p { margin:2px 0 6px; }
.turn { white-space:pre-wrap; overflow-wrap:anywhere; font:12px/1.45 ui-monospace,Menlo,Consolas,monospace;
        padding:4px 8px; margin:3px 0; border-radius:4px; }
.turn.user { background:#eff6ff; } .turn.model { background:#f1f5f9; }
.role { display:inline-block; min-width:44px; color:var(--muted); font-weight:600; margin-right:6px; }
.transcript .sev { margin:0 6px; }
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Bastion report: {{ a.title }}</title>
<style>{{ css }}</style>
</head>
<body>
<header>
  <h1>Bastion security assessment: {{ a.title }}</h1>
  <p>run {{ a.run_id }} &middot; {{ a.created }} &middot; {{ a.backend }} backend &middot; seed {{ a.seed }}</p>
</header>
<nav>
  <a href="#summary">Summary</a>
  {% for f in families %}<a href="#family-{{ f.report.family }}">{{ f.report.title.split(' (')[0] }}</a>{% endfor %}
  <a href="#sanity">Sanity checks</a><a href="#mitigations">Mitigations</a>
  <a href="#reproducibility">Reproducibility</a>
</nav>
<main>
<section id="summary">
  <h2>Executive summary</h2>
  <p><span class="grade big grade-{{ a.grade|gradeclass }}">{{ a.grade }}</span>
     &nbsp;{{ grade_meaning[a.grade] }}.</p>
  {% if not a.complete %}<p class="warn">This assessment is incomplete: some jobs failed or the run was
  interrupted, so the grades cover only what ran.</p>{% endif %}
  <p>{{ n_findings }} finding(s) above informational level:
  {% for sev, n in counts.items() %}{% if sev != 'info' %}<span class="sev sev-{{ sev }}">{{ n }} {{ sev }}</span>
  {% endif %}{% endfor %}</p>
  <table>
    <tr><th>family</th><th>grade</th><th>status</th><th>worst finding</th></tr>
    {% for f in families %}<tr>
      <td><a href="#family-{{ f.report.family }}">{{ f.report.title }}</a></td>
      <td><span class="grade grade-{{ f.report.grade|gradeclass }}">{{ f.report.grade }}</span></td>
      <td>{{ f.report.status }}{% if f.report.reason %}
        <span class="muted">({{ f.report.reason }})</span>{% endif %}</td>
      <td>{% if f.top %}<span class="sev sev-{{ f.top.severity }}">{{ f.top.severity }}</span> {{ f.top.title }}
          {% else %}<span class="muted">none</span>{% endif %}</td>
    </tr>{% endfor %}
  </table>
  {% if top %}<h3>Most severe findings</h3><ol>
  {% for fam, x in top %}<li><span class="sev sev-{{ x.severity }}">{{ x.severity }}</span>
    [{{ fam }}] {{ x.title }}</li>
  {% endfor %}</ol>{% endif %}
  <p class="muted">Model {{ a.model.get('path') }} ({{ a.model.get('format') }}, {{ a.model.get('access') }} access,
  {% if a.model.get('kind') == 'language-model' %}{% set sp = (a.inputs.get('system_prompt') or {}).get('path') %}
  language model){% if sp %}; system prompt {{ sp }}{% endif %}.{% else %}{{ a.model.get('n_classes') }} classes,
  input {{ a.model.get('input_shape') }}); evaluation data {{ data_name }}.{% endif %}</p>
</section>
{% for f in families %}{% set r = f.report %}
<section id="family-{{ r.family }}" class="family">
  <h2>{{ r.title }} <span class="grade grade-{{ r.grade|gradeclass }}">{{ r.grade }}</span></h2>
  <p>Status: <b>{{ r.status }}</b>{% if r.reason %}: {{ r.reason }}{% endif %}
     {% if r.seconds %}<span class="muted">&middot; {{ '%.1f'|format(r.seconds) }} s of jobs</span>{% endif %}</p>
  {% for e in r.errors %}<p class="warn">job failed: {{ e }}</p>{% endfor %}
  {% if r.headline %}<h3>Key metrics</h3><table><tr><th>metric</th><th>value</th></tr>
  {% for k, v in r.headline.items() %}<tr><td>{{ k }}</td><td>{{ v|num }}</td></tr>{% endfor %}</table>{% endif %}
  {% for p in f.plots %}<figure id="plot-{{ p.id }}"><img alt="{{ p.title }}" src="{{ p.uri }}">
  <figcaption><b>{{ p.title }}.</b> {{ p.caption }}</figcaption></figure>{% endfor %}
  {% for x in r.results if x.metrics.get('files') %}<h3>Scanned files</h3><table>
    <tr><th>file</th><th>format</th><th>size</th><th>sha256</th></tr>
    {% for f in x.metrics['files'] %}<tr><td>{{ f.path }}</td><td>{{ f.format }}</td><td>{{ f.size }}</td>
    <td><code>{{ f.sha256[:16] }}</code></td></tr>{% endfor %}</table>{% endfor %}
  {% if r.findings %}<h3>Findings</h3><table>
    <tr><th>severity</th><th>finding</th><th>metric</th><th>MITRE ATLAS</th>
    <th>{{ 'OWASP LLM Top 10' if r.family == 'llm' else 'OWASP ML Top 10' }}</th></tr>
    {% for x in r.findings|sortfindings %}<tr>
      <td><span class="sev sev-{{ x.severity }}">{{ x.severity }}</span></td>
      <td>{{ x.title }}{% if x.description or x.recommendation or x.evidence %}<details><summary>details</summary>
        {% if x.description %}<p>{{ x.description }}</p>{% endif %}
        {% if x.recommendation %}<p><b>Fix:</b> {{ x.recommendation }}</p>{% endif %}
        <pre>{{ x.evidence|evidence }}</pre></details>{% endif %}</td>
      <td>{{ x.metric }}{% if x.value is not none %} = {{ x.value|num }}{% endif %}</td>
      <td>{% for t in x.atlas %}<a href="https://atlas.mitre.org/techniques/{{ t }}">{{ t }}</a> {% endfor %}</td>
      <td>{{ x.owasp|join(', ') }}</td>
    </tr>{% endfor %}
  </table>{% endif %}
  {% include "llm.html" %}
  {% if r.results %}<h3>Runs</h3><table><tr><th>attack / scanner</th><th>queries</th><th>seconds</th><th>device</th>
  <th>parameters</th></tr>{% for x in r.results %}<tr><td>{{ x.attack }}</td><td>{{ x.queries }}</td>
  <td>{{ '%.2f'|format(x.seconds) }}</td><td>{{ x.device }}</td><td><code>{{ x.params|params }}</code></td></tr>
  {% endfor %}</table>{% endif %}
</section>
{% endfor %}
<section id="sanity">
  <h2>Sanity checks</h2>
  <p class="muted">Automatic checks that the numbers above can be trusted; a failed check is also a finding.</p>
  {% if sanity %}<table><tr><th>family</th><th>check</th><th>result</th><th>detail</th></tr>
  {% for c in sanity %}<tr><td>{{ c.family }}</td><td>{{ c.name }}</td>
  <td>{% if c.passed %}<span class="pass">pass</span>{% else %}<span class="fail">FAIL</span>{% endif %}</td>
  <td>{{ c.detail }}</td></tr>{% endfor %}</table>
  {% else %}<p>No sanity check applied to this run.</p>{% endif %}
</section>
<section id="mitigations">
  <h2>Recommended mitigations</h2>
  {% set ns = namespace(any=false) %}
  {% for f in families %}{% if f.mitigations %}{% set ns.any = true %}<h3>{{ f.report.title }}</h3><ul>
  {% for m in f.mitigations %}<li>{{ m }}</li>{% endfor %}</ul>{% endif %}{% endfor %}
  {% if not ns.any %}<p>No finding above informational level: keep re-assessing after every model change.</p>{% endif %}
</section>
<section id="reproducibility">
  <h2>Reproducibility</h2>
  <p>Re-run with the same plan and seed to get the same findings:</p>
  <pre>{{ command }}</pre>
  <table>
    <tr><th>run id</th><td>{{ a.run_id }}</td></tr>
    <tr><th>seed</th><td>{{ a.seed }}</td></tr>
    <tr><th>backend</th><td>{{ a.backend }}</td></tr>
    <tr><th>model sha256</th><td><code>{{ a.model.get('sha256') }}</code></td></tr>
    <tr><th>started / finished</th><td>{{ a.created }} / {{ a.finished }}</td></tr>
    <tr><th>wall time</th><td>{{ '%.1f'|format(a.seconds) }} s</td></tr>
    {% set sb = a.environment.get('sandbox') %}{% if sb %}
    <tr><th>model code</th><td>{% if sb.sandboxed %}sandboxed: {{ sb.isolation }}{% if sb.fallback %}
      (namespaces unavailable: {{ sb.reason }}){% endif %}{% else %}not sandboxed ({{ sb.reason }}){% endif %}</td></tr>
    {% endif %}
    <tr><th>python</th><td>{{ a.environment.get('python') }} on {{ a.environment.get('platform') }},
      {{ a.environment.get('cpus') }} CPU(s)
      {% if a.environment.get('gpu') %}, {{ a.environment.get('gpu') }}{% endif %}</td></tr>
    {% for name, v in a.environment.get('packages', {}).items() %}
    <tr><th>{{ name }}</th><td>{{ v }}</td></tr>{% endfor %}
  </table>
  <h3>Plan</h3>
  <pre>{{ plan_yaml }}</pre>
</section>
</main>
</body>
</html>
"""
