from pathlib import Path

import pytest

from search.common.errors import TaskError
from search.tasks.digits import DigitsTask
from search.tasks.loader import load_task

FIXTURES = Path(__file__).parent / "fixtures"


def test_builtin_digits(tmp_path: Path) -> None:
    task = load_task("digits", cache_dir=tmp_path)
    assert isinstance(task, DigitsTask)
    assert task.example_inputs(2).shape == (2, 1, 32, 32)
    sizes = {split: len(task.data(split).dataset) for split in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    assert sizes["val"] == pytest.approx(0.2 * 1797, abs=2)


def test_split_is_fixed_and_disjoint(tmp_path: Path) -> None:
    first, second = DigitsTask(cache_dir=tmp_path), DigitsTask(cache_dir=tmp_path)
    for split in ("train", "val", "test"):
        a, b = first.data(split).dataset.tensors[0], second.data(split).dataset.tensors[0]
        assert (a == b).all()
    train = {x.numpy().tobytes() for x in first.data("train").dataset.tensors[0]}
    test = {x.numpy().tobytes() for x in first.data("test").dataset.tensors[0]}
    assert len(train & test) < 0.02 * len(test)  # digits holds a few identical images


def test_file_factory(task_cache: Path) -> None:
    task = load_task(f"{FIXTURES / 'tiny_task.py'}:make_task", cache_dir=task_cache)
    assert task.name == "digits"
    assert task.example_inputs(1).shape == (1, 1, 16, 16)


def test_module_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_tasks.py").write_text(
        "from search.tasks.digits import DigitsTask\n"
        "from pathlib import Path\n"
        "def build():\n    return DigitsTask(cache_dir=Path('.'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert isinstance(load_task("my_tasks:build", cache_dir=tmp_path), DigitsTask)


@pytest.mark.parametrize(
    ("source", "attr", "message"),
    [
        (
            "def make():\n    raise RuntimeError('no weights here')\n",
            "make",
            "RuntimeError: no weights here",
        ),
        ("def make():\n    return 42\n", "make", "lacks name, build_model"),
        ("x = 1\n", "make", "no callable named 'make'"),
        ("import not_a_real_module_xyz\n", "make", "ModuleNotFoundError"),
    ],
)
def test_failures_name_the_cause(tmp_path: Path, source: str, attr: str, message: str) -> None:
    path = tmp_path / "task.py"
    path.write_text(source)
    with pytest.raises(TaskError, match=message) as info:
        load_task(f"{path}:{attr}", cache_dir=tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec", ["nope", "file.py", ":make", "pkg.mod:"])
def test_bad_specs(spec: str, tmp_path: Path) -> None:
    with pytest.raises(TaskError):
        load_task(spec, cache_dir=tmp_path)


def test_missing_module(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="cannot import no_such_pkg_abc"):
        load_task("no_such_pkg_abc.tasks:make", cache_dir=tmp_path)
