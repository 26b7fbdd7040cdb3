"""Checks benches/quality_table.py, the quality suite's merge and table steps:
    python3 tests/quality_table_test.py
Rows a run did not measure must survive (from the work directory or the published JSON), new
rows must carry their date, machine and training settings, and the table must show them."""
import json, os, subprocess, sys, tempfile, unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'benches', 'quality_table.py')


def row(acc, measured=None):
    r = {'acc': acc, 'acc_std': 0.01, 'nmi': acc / 2, 'nmi_std': 0.0, 'ari': acc / 3,
         'ari_std': 0.0, 'seconds': 5, 'seeds': 3}
    if measured:
        r['measured'] = measured
    return r


OLD_STAMP = {'date': '2026-01-01', 'machine': 'old machine'}


class QualityTable(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.work = os.path.join(self.dir.name, 'work')
        self.docs = os.path.join(self.dir.name, 'docs')
        os.makedirs(self.work)
        os.makedirs(self.docs)
        self.published = os.path.join(self.docs, 'quality.json')
        self.write(self.published, {'date': '2026-01-01', 'command': 'x', 'results': {
            'mnist-grass-01': {'raw': row(0.8, OLD_STAMP), 'whiten(ref)': row(0.9, OLD_STAMP)},
            'mnist-grass-shifted': {'raw': row(0.13, OLD_STAMP)},
        }})

    def tearDown(self):
        self.dir.cleanup()

    def write(self, path, value):
        with open(path, 'w') as f:
            json.dump(value, f)

    def read(self, path):
        with open(path) as f:
            return json.load(f)

    def run_script(self, *args):
        subprocess.run([sys.executable, SCRIPT, *args], check=True)

    def merge(self, dataset, new_rows, *extra):
        old = os.path.join(self.work, f'{dataset}.json')
        new = old + '.tmp'
        self.write(new, new_rows)
        self.run_script('merge', old, new, '--published', self.published, '--dataset', dataset, *extra)
        os.replace(new, old)
        return self.read(old)

    def test_merge_on_a_fresh_clone_keeps_the_published_rows_and_stamps_the_new(self):
        rows = self.merge('mnist-grass-01', {'raw': row(0.85), 'cidfd(align=28)': row(0.95)},
                          '--settings', 'examples/configs/moving-objects.toml')
        self.assertEqual(sorted(rows), ['cidfd(align=28)', 'raw', 'whiten(ref)'])
        self.assertEqual(rows['whiten(ref)']['measured'], OLD_STAMP)
        self.assertEqual(rows['raw']['acc'], 0.85)
        self.assertNotEqual(rows['raw']['measured']['machine'], 'old machine')
        self.assertNotIn('settings', rows['raw']['measured'])
        self.assertEqual(rows['cidfd(align=28)']['measured']['settings'],
                         'examples/configs/moving-objects.toml')

    def test_learned_rows_without_settings_say_defaults(self):
        rows = self.merge('mnist-grass-01', {'cidfd': row(0.97)})
        self.assertEqual(rows['cidfd']['measured']['settings'], 'defaults')

    def test_merge_prefers_the_work_directory_over_the_published_rows(self):
        self.merge('mnist-grass-01', {'pca(20)': row(0.7)})
        rows = self.merge('mnist-grass-01', {'raw': row(0.5)})
        self.assertEqual(sorted(rows), ['pca(20)', 'raw', 'whiten(ref)'])
        self.assertEqual(rows['pca(20)']['acc'], 0.7)

    def test_table_keeps_datasets_the_run_did_not_touch_and_numbers_the_machines(self):
        self.merge('mnist-grass-shifted', {'cidfd(align=28)': row(0.16)},
                   '--settings', 'examples/configs/moving-objects.toml')
        self.run_script('table', '--work', self.work, '--docs', self.docs,
                        '--published', self.published, '--no-chart')
        with open(os.path.join(self.docs, 'quality.md')) as f:
            md = f.read()
        # Suite order: mnist-grass-01 (only published) before mnist-grass-shifted (in work).
        self.assertLess(md.index('## mnist-grass-01'), md.index('## mnist-grass-shifted'))
        self.assertIn('1. old machine', md)
        self.assertIn('2. ', md)
        self.assertIn('| raw | 0.130 ± 0.010 | 0.065 ± 0.000 | 0.043 ± 0.000 | 5 | 3 | 2026-01-01 (1) |', md)
        self.assertRegex(md, r'\| cidfd\(align=28\) \| \*\*0\.160 ± 0\.010\*\* .* \(2\), '
                             r'examples/configs/moving-objects\.toml \|')
        published = self.read(self.published)['results']
        self.assertEqual(sorted(published), ['mnist-grass-01', 'mnist-grass-shifted'])
        self.assertIn('cidfd(align=28)', published['mnist-grass-shifted'])

    def test_rows_from_train_runs_fold_in_with_their_machine(self):
        models = []
        for seed, (acc, secs) in enumerate([(0.40, [2.0, 3.0]), (0.42, [2.5, 2.5]), (0.44, [3.0, 3.0])]):
            model = os.path.join(self.dir.name, f'seed{seed}')
            os.makedirs(model)
            self.write(os.path.join(model, 'manifest.json'),
                       {'metrics': {'acc': acc, 'nmi': acc / 2, 'ari': acc / 4, 'n': 100}})
            with open(os.path.join(model, 'training_log.csv'), 'w') as f:
                f.write('epoch,seconds,acc\n' + ''.join(f'{i},{s},\n' for i, s in enumerate(secs)))
            models.append(model)
        new = os.path.join(self.dir.name, 'rows.json')
        self.run_script('rows', 'cidfd(skip=3)', *models, '--out', new)
        got = self.read(new)['cidfd(skip=3)']
        self.assertAlmostEqual(got['acc'], 0.42)
        self.assertAlmostEqual(got['acc_std'], 0.02)
        self.assertAlmostEqual(got['ari'], 0.105)
        self.assertAlmostEqual(got['seconds'], 16 / 3)
        self.assertEqual((got['n'], got['seeds']), (100, 3))
        rows = self.merge('mnist-grass-01', self.read(new), '--machine', 'a GPU machine',
                          '--settings', 'quickstart.toml, --device cuda')
        self.assertEqual(rows['cidfd(skip=3)']['measured']['machine'], 'a GPU machine')
        self.assertEqual(rows['cidfd(skip=3)']['measured']['settings'], 'quickstart.toml, --device cuda')

    def test_a_failed_write_leaves_the_file_as_it_was(self):
        sys.path.insert(0, os.path.dirname(SCRIPT))
        import quality_table
        path = os.path.join(self.docs, 'quality.md')
        with open(path, 'w') as f:
            f.write('before')

        def fail_half_way(tmp):
            with open(tmp, 'w') as f:
                f.write('half')
            raise OSError('disk full')

        with self.assertRaises(OSError):
            quality_table.write_atomically(path, fail_half_way)
        with open(path) as f:
            self.assertEqual(f.read(), 'before')
        self.assertEqual(sorted(os.listdir(self.docs)), ['quality.json', 'quality.md'])


if __name__ == '__main__':
    unittest.main()
