import re
import sqlite3
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from blockqnn.codes import Block
from blockqnn.drawing import BOX_H, BOX_W, depths, draw_block, layout, polyline
from blockqnn.report import analysis, plots
from blockqnn.report import summary as report
from blockqnn.spaces import NSCSpace
from blockqnn.store import DB_NAME, Store
from tests.blocks import INCEPTION, RESIDUAL, random_block
from tests.helpers import (
    AGENT_CONFIGS,
    DAMAGED,
    FOREIGN,
    REPO,
    damage,
    folder_digest,
    make_run,
    read_wandb_run,
    report_cli,
    run_cli,
)


def test_report_writes_plots_drawings_and_summary_with_the_right_top_k(tmp_path):
    run = make_run(tmp_path / "run")
    with Store.open(run, readonly=True) as store:
        expected = store.best(3)
        rows = store.candidates()
    written = report.report(run, top_k=3)
    names = {p.name for p in written}
    assert {"reward.png", "best_so_far.png", "timeline.png", "top1.png", "top2.png", "top3.png", "summary.md"} <= names
    for p in written:
        if p.suffix == ".png":
            with Image.open(p) as im:
                assert im.size[0] > 200 and im.size[1] > 200
    summary = (run / "summary.md").read_text()
    table = [line for line in summary.splitlines() if re.match(r"\| \d+ \| `", line)]
    assert [line.split("`")[1] for line in table] == [r["arch"] for r in expected]
    rewards = [float(line.split("|")[3]) for line in table]
    assert rewards == sorted(rewards, reverse=True)
    best_trained = max(r["reward"] for r in rows if r["status"] == "ok")
    assert rewards[0] == pytest.approx(best_trained, abs=1e-4)
    assert "multi-branch" in summary and "blocks with add" in summary
    assert f"{len(rows)} sampled" in summary and "1 failed" in summary


def test_best_so_far_counts_trained_candidates_only(tmp_path):
    history = analysis.load_history(make_run(tmp_path / "run"), 3)
    curve = analysis.best_so_far(history)
    assert len(curve) == sum(1 for r in history.rows if not r["cached"]) < len(history.rows)
    assert np.all(np.diff(curve[np.isfinite(curve)]) >= 0)
    assert curve[-1] == pytest.approx(max(r["reward"] for r in history.rows if r["status"] == "ok"))


def test_epsilon_stages_follow_the_schedule(tmp_path):
    history = analysis.load_history(make_run(tmp_path / "run", iterations=3, batch=4, epsilons=(1.0, 0.5, 0.5)), 1)
    assert plots._epsilon_stages(history.rows) == [(1, 4, 1.0), (5, 12, 0.5)]


def test_running_mean_ignores_failures():
    values = np.array([1.0, np.nan, 3.0, 5.0])
    assert plots.running_mean(values, 2).tolist() == [1.0, 1.0, 3.0, 4.0]


def test_multirun_compares_agents(tmp_path, monkeypatch):
    legends, save = {}, plots.save_figure

    def save_and_note_legend(fig, path):
        legends[path] = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        return save(fig, path)

    monkeypatch.setattr(plots, "save_figure", save_and_note_legend)
    sweep = tmp_path / "multirun"
    runs = [(agent, seed) for agent in AGENT_CONFIGS for seed in (0, 1)]
    for i, (agent, seed) in enumerate(runs):
        make_run(sweep / str(i), agent=agent, seed=seed)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    Store.create(sweep / str(len(runs)), {"seed": 9}).close()  # a run that has not finished a candidate yet
    written = report.report(sweep, top_k=2)
    assert (sweep / "agents.png").is_file()
    assert all((sweep / str(i) / "summary.md").is_file() for i in range(len(runs)))
    assert not (sweep / str(len(runs)) / "summary.md").exists()
    summary = (sweep / "summary.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in summary.splitlines() if line.startswith("| ")}
    assert all("| 2 |" in rows[agent] for agent in AGENT_CONFIGS)
    assert sweep / "summary.md" in written
    assert sorted(label.split(" (")[0] for label in legends[sweep / "agents.png"]) == sorted(AGENT_CONFIGS)


def test_features_of_the_paper_blocks():
    res, inc = analysis.block_features(Block.parse(RESIDUAL)), analysis.block_features(Block.parse(INCEPTION))
    assert res["shortcut"] == 1 and res["multi_branch"] == 1 and res["n_add"] == 1 and res["n_conv"] == 2
    assert inc["multi_branch"] == 1 and inc["n_concat"] == 2 and inc["n_conv"] == 5 and inc["n_add"] == 0
    chain = analysis.block_features(Block.parse("(1,1,3,0,0)(2,1,3,1,0)(3,7,0,0,0)"))
    assert chain["shortcut"] == 0 and chain["multi_branch"] == 0


@pytest.mark.parametrize("code", [RESIDUAL, INCEPTION])
def test_drawing_of_the_paper_blocks(tmp_path, code):
    block = Block.parse(code)
    depth = depths(block)
    assert all(depth[dst] > depth[src] for src, dst in block.edges())
    pos, routes = layout(block)
    real = [p for n, p in pos.items() if not isinstance(n, tuple)]
    assert len(real) == len(block.layers) + 1 and len(set(real)) == len(real)  # input, layers, output; no overlap
    assert len(routes) == len(block.edges())
    assert all(pos[r[0]][1] > pos[r[-1]][1] for r in routes)  # every edge runs downwards
    path = draw_block(block, tmp_path / "block.png", "title")
    with Image.open(path) as im:
        assert im.size[1] > im.size[0] / 2


def crosses_box(a, b, centre) -> bool:
    """Whether segment a-b enters the box drawn around ``centre`` (sampled finely; boxes are 0.9 x 0.42)."""
    (ax, ay), (bx, by), (cx, cy) = a, b, centre
    steps = np.linspace(0.0, 1.0, 200)
    xs, ys = ax + (bx - ax) * steps, ay + (by - ay) * steps
    return bool(np.any((np.abs(xs - cx) < BOX_W / 2 - 1e-6) & (np.abs(ys - cy) < BOX_H / 2 - 1e-6)))


def test_edges_never_cross_a_box_they_do_not_connect():
    rng, space = np.random.default_rng(3), NSCSpace()
    blocks = [Block.parse(RESIDUAL), Block.parse(INCEPTION), *(random_block(space, rng) for _ in range(40))]
    for block in blocks:
        pos, routes = layout(block)
        boxes = {n: p for n, p in pos.items() if not isinstance(n, tuple)}
        for route in routes:
            points = polyline(route, pos)
            others = [c for n, c in boxes.items() if n not in (route[0], route[-1])]
            assert not any(crosses_box(a, b, c) for a, b in zip(points, points[1:]) for c in others), str(block)


def test_inception_layout_has_three_branches_side_by_side():
    pos, _ = layout(Block.parse(INCEPTION))
    row = pos[2][1]
    assert pos[4][1] == row and pos[7][1] == row and len({pos[2][0], pos[4][0], pos[7][0]}) == 3


def test_report_sends_pictures_to_the_tracked_wandb_run_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = make_run(tmp_path / "run", wandb_id="abc123", max_epochs=3, rungs=(1,))
    report.report(run, top_k=1)
    offline = list((run / "wandb").glob("offline-run-*abc123"))
    assert offline, list((run / "wandb").iterdir())
    media = list(offline[0].rglob("*.png"))
    assert {"reward", "best_so_far", "curves", "top1"} <= {p.name.rsplit("_", 2)[0] for p in media}  # NAME_STEP_HASH


@pytest.mark.slow
def test_report_of_an_offline_run_names_every_part_to_sync(tmp_path):
    """A tracked search's part and the report's share one id; the report says to sync every part, and W&B's
    advice to sync the report's part alone is not printed."""
    from blockqnn.spaces.nasbench201 import write_synthetic_table

    table, run = write_synthetic_table(tmp_path / "t.csv", seed=0), tmp_path / "run"
    search = ["space=nasbench201", f"space.table={table}", "reward=accuracy", "progress.mode=off", "agent.batch_size=4",
              "agent.schedule_scale=0.02", f"hydra.run.dir={run}"]
    offline = {"WANDB_MODE": "offline", "WANDB_SILENT": "false"}
    assert run_cli(*search, env=offline).returncode == 0
    proc = run_cli(str(run), module="report", env=offline)
    assert proc.returncode == 0, proc.stderr
    parts = read_wandb_run(run)
    assert len(parts) == 2 and len({part["id"] for part in parts}) == 1
    assert f"W&B run {parts[0]['id']} is offline, in parts (search, resumes, report); upload them all with: " \
           f"wandb sync {run / 'wandb'}/offline-run-*" in proc.stdout
    assert "wandb sync" not in proc.stderr and proc.stdout.count("wandb sync") == 1


@pytest.mark.slow
def test_cli_bad_input_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "history.sqlite").write_bytes(b"not a database at all" * 100)
    for target in (tmp_path / "empty", corrupt, tmp_path / "missing"):
        proc = subprocess.run([sys.executable, "-m", "blockqnn.report", str(target)], capture_output=True, text=True)
        assert proc.returncode == 1
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert (corrupt / "history.sqlite").read_bytes() == b"not a database at all" * 100


def test_the_report_leaves_the_users_matplotlib_backend_and_figures_alone(tmp_path):
    """A notebook that imports the report's modules and draws with them keeps its own backend, and pyplot gets no
    figures from them (a fresh interpreter: this one has imported them already)."""
    code = (f"import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt\n"
            f"from blockqnn.codes import Block\n"
            f"from blockqnn import drawing\nfrom blockqnn.report import plots, summary\n"
            f"drawing.draw_block(Block.parse({RESIDUAL!r}), {str(tmp_path / 'block.png')!r})\n"
            f"print(matplotlib.get_backend(), len(plt.get_fignums()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["svg", "0"] and Image.open(tmp_path / "block.png").size[0] > 100


def test_report_never_writes_to_the_history(tmp_path):
    run = make_run(tmp_path / "run")
    before = sqlite3.connect(run / "history.sqlite").execute("SELECT count(*) FROM candidates").fetchone()
    report.report(run, top_k=2, wandb=False)
    after = sqlite3.connect(run / "history.sqlite").execute("SELECT count(*) FROM candidates").fetchone()
    assert before == after


def test_report_of_a_table_space_run_has_no_drawings(tmp_path):
    from blockqnn.spaces.nasbench201 import all_archs

    store = Store.create(tmp_path / "run", {"seed": 0, "agent": {"epsilon_override": None}})
    for i, arch in enumerate(all_archs()[:12]):
        store.record({"iteration": i // 4, "position": i % 4, "arch": arch, "hash": str(i), "status": "ok",
                      "accuracy": i / 20, "reward": i / 20, "epsilon": 1.0, "cached": 0})
    store.close()
    written = report.report(tmp_path / "run", top_k=2, wandb=False)
    assert not [p for p in written if p.name.startswith("top")]
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert all_archs()[11] in summary and "have in common" not in summary


@pytest.mark.parametrize("name", ["config-not-yaml", "column-renamed", *FOREIGN])
def test_report_of_a_damaged_or_foreign_run_is_one_error_line_and_writes_nothing(tmp_path, capsys, monkeypatch, name):
    sql, message = (DAMAGED | FOREIGN)[name]
    run = make_run(tmp_path / "run")
    damage(run, sql)
    before = folder_digest(run)
    code, err = report_cli([str(run)], capsys, monkeypatch)
    assert code == 1 and err.startswith(f"error: {run / DB_NAME} ") and err.count("\n") == 1, err
    assert message in err
    assert folder_digest(run) == before


def test_multirun_report_leaves_out_a_damaged_run_with_a_warning(tmp_path, capsys):
    sweep = tmp_path / "multirun"
    for i, agent in enumerate(["q-learning", "random"]):
        make_run(sweep / str(i), agent=agent, seed=i)
    bad = make_run(sweep / "2", seed=2)
    damage(bad, DAMAGED["config-not-yaml"][0])
    before = folder_digest(bad)
    report.report(sweep, top_k=1, wandb=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "config is not valid YAML" in warnings[0]
    assert warnings[0].startswith(f"warning: left out of the report: {bad / DB_NAME} is corrupt")
    summary = (sweep / "summary.md").read_text()
    assert "| q-learning | 1 |" in summary and "| random | 1 |" in summary
    assert f"- {bad / DB_NAME} is corrupt" in summary.split("Left out, unreadable:")[1]
    assert folder_digest(bad) == before and all((sweep / str(i) / "summary.md").is_file() for i in range(2))


def test_multirun_of_damaged_runs_only_is_one_error_line_naming_one(tmp_path, capsys, monkeypatch):
    sweep = tmp_path / "multirun"
    for i, name in enumerate(["column-renamed", "config-not-yaml"]):
        damage(make_run(sweep / str(i), seed=i), DAMAGED[name][0])
    code, err = report_cli([str(sweep)], capsys, monkeypatch)
    expected = f"{sweep / '0' / DB_NAME} is corrupt or not a search history (missing columns: candidates.reward)"
    assert code == 1 and err == f"error: {expected}\n"
    assert not (sweep / "summary.md").exists()


def test_timeline_packs_candidates_into_as_many_rows_as_ran_at_once():
    from blockqnn.report.plots import worker_lanes

    def trained(start, end, cached=0):
        return dict(started_at=start, finished_at=end, cached=cached, status="ok")

    rows = [trained(0, 4), trained(0, 1), trained(1, 2), trained(2, 5), trained(4, 6), trained(3, 3, cached=1)]
    lanes = worker_lanes(rows)
    assert [[(s, e) for s, e, _ in lane] for lane in lanes] == [[(0, 4), (4, 6)], [(0, 1), (1, 2), (2, 5)]]


def test_multirun_compares_agents_at_equal_numbers_of_trained_blocks(tmp_path):
    """A random search that ran twice as long must not look better for it: every run is cut at the fewest
    trained blocks any run reached."""
    sweep = tmp_path / "multirun"
    make_run(sweep / "0", agent="q-learning", iterations=2)
    make_run(sweep / "1", agent="random", seed=4, iterations=4, epsilons=(1.0,) * 4)  # improves after 12 blocks
    histories = [analysis.load_history(sweep / str(i), 1) for i in range(2)]
    budget = min(len(h.trained()) for h in histories)
    assert analysis.common_budget(histories) == budget < len(histories[1].trained())
    expected = analysis.best_so_far(histories[1])[budget - 1]
    assert expected < analysis.best_so_far(histories[1])[-1]  # the longer run found better blocks later
    report.report(sweep, top_k=1, wandb=False)
    summary = (sweep / "summary.md").read_text()
    assert f"best reward after {budget} trained (mean ± std)" in summary
    rows = {line.split("|")[1].strip(): line.split("|") for line in summary.splitlines() if line.startswith("| ")}
    assert rows["random"][3].strip() == f"{expected:.4f} ± 0.0000"
    assert rows["random"][4].strip() == str(len(histories[1].trained()))


def label_margins(block, title):
    """Pixels between each label and its box's edge, left and right, in the drawing the report makes."""
    from blockqnn.drawing import block_figure, wrap_code

    fig, boxes = block_figure(block, f"{title}\n{wrap_code(str(block))}")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    margins = {}
    for box, label in boxes:
        outer, inner = box.get_window_extent(renderer), label.get_window_extent(renderer)
        margins[label.get_text()] = min(inner.x0 - outer.x0, outer.x1 - inner.x1)
    plt.close(fig)
    return margins


def test_every_label_sits_inside_its_box_with_room():
    rng, space = np.random.default_rng(5), NSCSpace()
    blocks = [Block.parse(RESIDUAL), Block.parse(INCEPTION), *(random_block(space, rng) for _ in range(25))]
    worst = {}
    for block in blocks:
        for text, margin in label_margins(block, "rank 1: reward 0.9000, accuracy 0.9100").items():
            worst[text] = min(worst.get(text, np.inf), margin)
    assert "output\n(concat)" in worst and "max pool 3x3" in worst
    assert min(worst.values()) >= 3, {t: round(m, 1) for t, m in worst.items()}


def test_edges_between_the_same_two_nodes_are_drawn_side_by_side():
    from blockqnn.drawing import edge_lines

    block = Block.parse("[(1,1,3,0,0),(2,5,0,1,1),(3,6,0,2,2),(4,7,0,0,0)]")  # add(x, x), concat(y, y)
    pos, routes = layout(block)
    lines = [tuple(line) for line in edge_lines(routes, pos)]
    assert len(lines) == len(block.edges()) == 6 and len(set(lines)) == 6


def test_layer_colours_are_told_apart():
    """CIE76 colour difference (Lab) of every two layer types' colours: 20 is clearly different at a glance."""
    from matplotlib.colors import to_rgb

    from blockqnn.drawing import COLOURS

    def lab(colour):
        rgb = np.array(to_rgb(colour))
        linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
        xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ linear
        f = np.cbrt(xyz / np.array([0.9505, 1.0, 1.089]))
        return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])

    pairs = [(a, b) for a in COLOURS for b in COLOURS if a < b]
    distances = {(a.name, b.name): float(np.linalg.norm(lab(COLOURS[a]) - lab(COLOURS[b]))) for a, b in pairs}
    assert min(distances.values()) >= 20, sorted(distances.items(), key=lambda kv: kv[1])[:3]
