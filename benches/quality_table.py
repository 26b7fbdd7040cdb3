"""The two Python steps of benches/quality.sh.

  quality_table.py merge OLD.json NEW.json [--settings TEXT] [--published F --dataset NAME]
      Folds one `salient compare --format json` result (NEW) into a dataset's accumulated rows
      (OLD; where it is missing, the dataset's rows in the published docs/quality.json) and
      writes the union to NEW. Every row NEW brings is stamped with when and on which processor
      it was measured, and the learned rows with their training settings; rows of methods NEW
      does not have keep their earlier results and stamps, so one method can be rerun or added
      alone, from a fresh clone too.

  quality_table.py rows NAME MODEL_DIR ... --out NEW.json
      One row in compare's JSON shape (mean and sample sd over seeds) from `salient train` runs
      on labelled data, one model directory per seed: their manifests' scores, and as seconds
      the mean of their training logs' epoch times. For runs made where compare was not (a GPU
      machine); fold the result in with `merge --machine`.

  quality_table.py table --work DIR --docs DIR [--published F] [--datasets NAME ...]
      Assembles every dataset's rows (those in DIR, and the published ones of datasets DIR has
      no JSON for) into DOCS/quality.md (a dated table with a `measured` column),
      DOCS/quality.json and, unless --no-chart, DOCS/quality.png (bar chart of ACC).

Rows keep compare's names; contrastive PCA is reported per alpha (choosing alpha by the labels
would be cheating), and the table marks the best row of each dataset per score."""
import argparse, datetime, json, os, platform, subprocess

COMMAND = ('`bash benches/quality.sh` (every method on every dataset; `DATASETS`, `METHODS`, '
           '`CONFIG`, `EPOCHS` and `SEEDS` rerun a part, and the other rows stay)')

# The suite's datasets in the order the table shows them; other names follow, sorted.
SUITE = ['mnist-grass-01', 'mnist-grass-012', 'mnist-grass-shifted', 'fashion-textures-shifted',
         'mnist-grass', 'fashion-textures']


def cpu_name():
    """The processor as lscpu names it, with family and model (virtual machines often give
    only the brand), the core count and the widest vector extension."""
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
        fields = {}
        for line in out.splitlines():
            key, _, value = line.partition(':')
            fields.setdefault(key.strip(), value.strip())
        flags = fields['Flags'].split()
        vec = 'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2'
        name = fields['Model name']
        if 'CPU family' in fields and 'Model' in fields:
            name += f" family {fields['CPU family']} model {fields['Model']}"
        return f'{name}, {os.cpu_count()} cores, {vec}'
    except Exception:
        return platform.processor() or 'unknown CPU'


def write_atomically(path, write):
    """Runs `write(tmp_path)`, then renames the file into place: a failed run leaves `path` as
    it was."""
    tmp = path + '.tmp'
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    def write(tmp):
        with open(tmp, 'w') as f:
            f.write(text)
    write_atomically(path, write)


def is_learned(method):
    """IDFD and cIDFD rows (`cidfd`, `cidfd(align=28)`, ...): the ones training settings change."""
    return method.split('(')[0] in ('idfd', 'cidfd')


def merge(a):
    rows = {}
    if os.path.exists(a.old):
        with open(a.old) as f:
            rows = json.load(f)
    elif a.published and os.path.exists(a.published):
        # A fresh clone has no work directory: start from the rows the docs publish.
        with open(a.published) as f:
            rows = json.load(f)['results'].get(a.dataset, {})
    with open(a.new) as f:
        new = json.load(f)
    stamp = {'date': datetime.date.today().isoformat(), 'machine': a.machine or cpu_name()}
    for method, row in new.items():
        row['measured'] = dict(stamp)
        if is_learned(method):
            row['measured']['settings'] = a.settings or 'defaults'
    rows.update(new)
    write_text(a.new, json.dumps(rows, indent=2, sort_keys=True))


def rows(a):
    import csv, statistics
    scores, seconds = [], []
    for model in a.models:
        with open(os.path.join(model, 'manifest.json')) as f:
            metrics = json.load(f).get('metrics')
        if not metrics:
            raise SystemExit(f'{model}/manifest.json has no scores (was the target labelled?)')
        scores.append(metrics)
        with open(os.path.join(model, 'training_log.csv')) as f:
            seconds.append(sum(float(r['seconds']) for r in csv.DictReader(f)))
    row = {'n': scores[0]['n'], 'seeds': len(scores), 'seconds': statistics.mean(seconds)}
    for key in ('acc', 'nmi', 'ari'):
        values = [s[key] for s in scores]
        row[key] = statistics.mean(values)
        row[key + '_std'] = statistics.stdev(values) if len(values) > 1 else 0.0
    write_text(a.out, json.dumps({a.name: row}, indent=2, sort_keys=True))


def measured_cell(row, machines):
    """`date (n)` with n the row's machine's number in the table's list of machines, plus the
    training settings where the row has them."""
    stamp = row.get('measured')
    if not stamp:
        return 'not recorded'
    machine = stamp.get('machine', 'not recorded')
    if machine not in machines:
        machines.append(machine)
    cell = f"{stamp.get('date', '?')} ({machines.index(machine) + 1})"
    if stamp.get('settings'):
        cell += f", {stamp['settings']}"
    return cell


def table(a):
    published = {}
    if a.published and os.path.exists(a.published):
        with open(a.published) as f:
            published = json.load(f)['results']
    results = dict(published)
    if os.path.isdir(a.work):
        for f in os.listdir(a.work):
            if f.endswith('.json'):
                with open(os.path.join(a.work, f)) as fh:
                    results[f[:-len('.json')]] = json.load(fh)
    names = a.datasets or [n for n in SUITE if n in results] + sorted(set(results) - set(SUITE))
    missing = [n for n in names if n not in results]
    if not names or missing:
        raise SystemExit(f'no results for {missing or "any dataset"} in {a.work} or {a.published}')
    results = {name: results[name] for name in names}
    today = datetime.date.today().isoformat()

    machines = []
    body = []
    for name, rows in results.items():
        best = {key: max(r[key] for r in rows.values()) for key in ('acc', 'nmi', 'ari')}
        body += [f'## {name}', '', '| method | ACC | NMI | ARI | seconds | seeds | measured |',
                 '|---|---|---|---|---|---|---|']
        for method, r in rows.items():
            cells = []
            for key in ('acc', 'nmi', 'ari'):
                cell = f"{r[key]:.3f} ± {r[key + '_std']:.3f}"
                cells.append(f'**{cell}**' if r[key] == best[key] else cell)
            body.append(f"| {method} | {' | '.join(cells)} | {r.get('seconds', 0):.0f} | "
                        f"{r['seeds']} | {measured_cell(r, machines)} |")
        body.append('')

    lines = [
        '# Clustering quality',
        '',
        f'Regenerate with {a.command}.',
        '',
        f'Assembled on {today}. Each row says when it was measured, on which machine (numbered',
        'below) and, for IDFD and cIDFD, with which training settings.',
        '',
        'Machines:',
        '',
        *[f'{i + 1}. {m}' for i, m in enumerate(machines)],
        '',
        'Mean ± standard deviation over seeds (k-means seeds; for IDFD and cIDFD also the',
        'training seed); datasets built with seed 0. ACC is Hungarian-matched accuracy, NMI the',
        'arithmetic-mean normalised mutual information, ARI the adjusted Rand index. **Bold**: the',
        'best mean of the dataset. Seconds: wall-clock per seed (fit + k-means) on the row\'s',
        'machine.',
        '',
        *body,
    ]
    os.makedirs(a.docs, exist_ok=True)
    write_text(os.path.join(a.docs, 'quality.md'), '\n'.join(lines))
    write_text(os.path.join(a.docs, 'quality.json'),
               json.dumps({'date': today, 'command': a.command, 'results': results}, indent=1))

    if a.no_chart:
        return
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.6), squeeze=False)
    for ax, (name, rows) in zip(axes[0], results.items()):
        methods = list(rows)
        ax.bar(range(len(methods)), [rows[m]['acc'] for m in methods],
               yerr=[rows[m]['acc_std'] for m in methods], color='tab:blue')
        ax.set_xticks(range(len(methods)), methods, rotation=70, fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel('ACC')
    fig.tight_layout()
    write_atomically(os.path.join(a.docs, 'quality.png'),
                     lambda tmp: fig.savefig(tmp, dpi=90, format='png'))


def main():
    p = argparse.ArgumentParser()
    steps = p.add_subparsers(dest='step', required=True)
    m = steps.add_parser('merge', help="fold one compare result into a dataset's rows")
    m.add_argument('old', help='accumulated rows (may be missing)')
    m.add_argument('new', help='compare --format json output; overwritten with the union')
    m.add_argument('--settings', help='training settings of the learned rows (e.g. the config file)')
    m.add_argument('--published', help='docs/quality.json: its rows of --dataset start OLD when OLD is missing')
    m.add_argument('--dataset', help='the dataset NEW is about (with --published)')
    m.add_argument('--machine', help='where NEW was measured (default: this processor)')
    m.set_defaults(run=merge)
    r = steps.add_parser('rows', help='one row from salient train runs, one model directory per seed')
    r.add_argument('name', help="the row's name, as compare would give it (e.g. 'cidfd(skip=3)')")
    r.add_argument('models', nargs='+')
    r.add_argument('--out', required=True)
    r.set_defaults(run=rows)
    t = steps.add_parser('table', help='write quality.md, quality.json and quality.png')
    t.add_argument('--work', required=True)
    t.add_argument('--docs', required=True)
    t.add_argument('--published', help='the current docs/quality.json: datasets not in --work keep its rows')
    t.add_argument('--datasets', nargs='*', help='default: every dataset with results')
    t.add_argument('--command', default=COMMAND, help='how to regenerate, as Markdown')
    t.add_argument('--no-chart', action='store_true', help='skip quality.png (no matplotlib needed)')
    t.set_defaults(run=table)
    a = p.parse_args()
    a.run(a)


if __name__ == '__main__':
    main()
