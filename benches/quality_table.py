"""Assembles the per-dataset `salient compare --format json` results of benches/quality.sh into
docs/quality.md (a dated table), docs/quality.json and docs/quality.png (bar chart of ACC).

Rows keep compare's names; contrastive PCA is reported per alpha (choosing alpha by the labels
would be cheating), and the table marks the best row of each dataset per score."""
import argparse, datetime, json, os, platform, subprocess


def cpu_name():
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
        model = next(l.split(':', 1)[1].strip() for l in out.splitlines() if l.startswith('Model name'))
        flags = next(l.split(':', 1)[1] for l in out.splitlines() if l.startswith('Flags')).split()
        vec = 'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2'
        return f'{model}, {os.cpu_count()} cores, {vec}'
    except Exception:
        return platform.processor() or 'unknown CPU'


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--work', required=True)
    p.add_argument('--docs', required=True)
    p.add_argument('--datasets', nargs='+', required=True)
    p.add_argument('--command', required=True, help='how to regenerate, as Markdown')
    p.add_argument('--measured', help='when the rows were measured, if not all today (as Markdown)')
    a = p.parse_args()

    results = {}
    for name in a.datasets:
        with open(os.path.join(a.work, f'{name}.json')) as f:
            results[name] = json.load(f)
    today = datetime.date.today().isoformat()
    machine = cpu_name()

    lines = [
        '# Clustering quality',
        '',
        f'Regenerate with {a.command}. Measured on {a.measured or today}, {machine}.',
        '',
        'Mean ± standard deviation over seeds (k-means seeds; for IDFD and cIDFD also the',
        'training seed); datasets built with seed 0. ACC is Hungarian-matched accuracy, NMI the',
        'arithmetic-mean normalised mutual information, ARI the adjusted Rand index. **Bold**: the',
        'best mean of the dataset. Seconds: wall-clock per seed (fit + k-means).',
        '',
    ]
    for name, rows in results.items():
        best = {key: max(r[key] for r in rows.values()) for key in ('acc', 'nmi', 'ari')}
        lines += [f'## {name}', '', '| method | ACC | NMI | ARI | seconds | seeds |', '|---|---|---|---|---|---|']
        for method, r in rows.items():
            cells = []
            for key in ('acc', 'nmi', 'ari'):
                cell = f"{r[key]:.3f} ± {r[key + '_std']:.3f}"
                cells.append(f'**{cell}**' if r[key] == best[key] else cell)
            lines.append(f"| {method} | {' | '.join(cells)} | {r.get('seconds', 0):.0f} | {r['seeds']} |")
        lines.append('')
    os.makedirs(a.docs, exist_ok=True)
    with open(os.path.join(a.docs, 'quality.md'), 'w') as f:
        f.write('\n'.join(lines))
    with open(os.path.join(a.docs, 'quality.json'), 'w') as f:
        json.dump({'date': today, 'machine': machine, 'command': a.command, 'results': results}, f, indent=1)

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.6), squeeze=False)
    for ax, (name, rows) in zip(axes[0], results.items()):
        names = list(rows)
        ax.bar(range(len(names)), [rows[m]['acc'] for m in names],
               yerr=[rows[m]['acc_std'] for m in names], color='tab:blue')
        ax.set_xticks(range(len(names)), names, rotation=70, fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel('ACC')
    fig.tight_layout()
    fig.savefig(os.path.join(a.docs, 'quality.png'), dpi=90)


if __name__ == '__main__':
    main()
