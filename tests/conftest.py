"""Shared test fixtures: a tiny DINet-made training set (random crops, 29-d 'DeepSpeech' vectors), and the
`needs_shared` marker for tests that read ../shared (reference tensors, real clips): a checkout without it skips
them and names every one at the end of the run."""
import json
import os
import sys

import cv2
import numpy as np
import pytest

# pytest -n N (pytest-xdist): each worker takes its share of the cores, for its own torch and for the
# training and dubbing processes it starts, so N workers do not run N x cores threads
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
SHARED_MISSING = "needs ../shared/"  # the start of the reason of every skip for want of ../shared


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_shared(*paths): the test reads these paths under ../shared "
                                       "(skipped, and listed at the end of the run, where one is missing)")
    config.addinivalue_line("markers", "slow: takes minutes; skipped unless -m names it (pytest -m slow)")
    config.addinivalue_line("markers", "xdist_group(name): run in one worker under -n N (known without xdist too)")
    config.addinivalue_line("markers", "long: half a minute or more on 2 cores; under -n N it starts among the first, "
                                       "so that it does not end the run alone")
    # -n N: the tests of one xdist_group run in one worker (tests/test_app.py's share one app process), the rest as
    # xdist's "load" spreads them: the controller schedules by group, the workers put the group in each test's id
    if getattr(config.option, "dist", None) == "load":
        config.option.dist = "loadgroup"
    if hasattr(config, "workerinput"):
        config.option.loadgroup = True


def uses_module_fixture(item):
    """Whether `item` uses a module-scoped fixture (built once in each worker that runs one of its users)."""
    info = getattr(item, "_fixtureinfo", None)
    return any(definitions and definitions[-1].scope == "module" for definitions in
               (info.name2fixturedefs.values() if info else ()))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    run_slow = "slow" in (config.getoption("markexpr") or "")
    for item in items:
        if not item.get_closest_marker("xdist_group") and uses_module_fixture(item):  # -n N: built in one worker
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}-fixtures"))
        if item.get_closest_marker("slow") and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run it with -m slow"))
        for marker in item.iter_markers("needs_shared"):
            missing = [path for path in marker.args if not os.path.exists(os.path.join(SHARED, path))]
            if missing:
                item.add_marker(pytest.mark.skip(reason=f"{SHARED_MISSING}{missing[0]}, which this checkout lacks"))
    if hasattr(config, "workerinput"):  # the long tests and the groups go out first; the short ones even out the end
        items.sort(key=lambda item: not (item.get_closest_marker("long") or item.get_closest_marker("xdist_group")))


def pytest_terminal_summary(terminalreporter):
    """Name every test skipped for want of ../shared: a clone without it passes without running them."""
    skipped = [report for report in terminalreporter.stats.get("skipped", [])
               if isinstance(report.longrepr, tuple) and SHARED_MISSING in report.longrepr[2]]
    if skipped:
        terminalreporter.write_sep("=", f"{len(skipped)} tests NOT RUN: ../shared is missing", red=True, bold=True)
        for report in skipped:
            terminalreporter.write_line(f"{report.nodeid}  ({report.longrepr[2].removeprefix('Skipped: ')})")


def write_dinet_json(folder, videos=2, clips=6, width=29, seed=0, relative_to_cwd=False):
    """A training JSON exactly as DINet's data_processing.py writes it (no audio_feature fields)."""
    rng = np.random.default_rng(seed)
    data = {}
    for v in range(videos):
        clip_list = []
        for c in range(clips):
            paths = []
            for f in range(9):
                path = os.path.join(folder, "crop", f"video{v}", f"{c:06d}", f"{c * 9 + f:06d}.jpg")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                image = rng.integers(0, 256, (60, 48, 3), dtype=np.uint8)
                cv2.imwrite(path, cv2.GaussianBlur(image, (7, 7), 2))
                paths.append(os.path.relpath(path) if relative_to_cwd else path)
            clip_list.append({"frame_name_list": [os.path.basename(p) for p in paths], "frame_path_list": paths,
                              "deep_speech_list": rng.normal(size=(9, width)).round(4).tolist()})
        data[f"video{v}"] = {"video_clip_num": clips, "clip_data_list": clip_list}
    json_path = os.path.join(folder, "training_json.json")
    with open(json_path, "w") as f:
        json.dump(data, f)
    return json_path


@pytest.fixture(scope="session")
def tiny_json(tmp_path_factory):
    return write_dinet_json(str(tmp_path_factory.mktemp("tiny_data")))


def refusal(script, argv, monkeypatch, capsys):
    """Run a command in this process as `python script argv` from the repository's folder; the one-line message it
    stops with (it must stop, without a traceback)."""
    import runpy
    import sys
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    assert "Traceback" not in capsys.readouterr().err
    message = str(exit_info.value.code)
    assert "\n" not in message, message
    return message

