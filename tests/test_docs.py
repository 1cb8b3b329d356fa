"""The docs cannot rot: every `python -m` command in README.md, WORKSPACE.md and docs/*.md names a module that exists,
with flags it accepts and gin files that exist, and every relative link leads to a file (and heading) that is there.
The checker itself (tests/docs.py) is tested on small texts first."""

import glob
import os

import pytest

from tests import docs
from tests.processes import REPO

DOCS = sorted([os.path.join(REPO, "README.md"), os.path.join(REPO, "WORKSPACE.md"),
               *glob.glob(os.path.join(REPO, "docs", "*.md"))])


@pytest.mark.parametrize("path", DOCS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_command_in_the_docs_runs_a_module_with_flags_and_files_that_exist(path):
  with open(path, encoding="utf-8") as f:
    assert docs.command_problems(f.read()) == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_relative_link_in_the_docs_resolves(path):
  with open(path, encoding="utf-8") as f:
    assert docs.link_problems(f.read(), os.path.dirname(path)) == []


def test_the_docs_show_commands():  # so that the checks above do check something
  modules = set()
  for path in DOCS:
    with open(path, encoding="utf-8") as f:
      modules |= {module for _, module, _ in docs.commands(f.read())}
  assert {"trainer.main", "trainer.export", "trainer.report", "trainer.evaluate", "benchmarks",
          "benchmarks.evaluation", "launch.local"} <= modules


def test_commands_are_found_in_code_spans_blocks_and_continued_lines():
  text = ("Run `python -m trainer.report --model_dir=DIR` to draw it.\n\n"
          "    python3 -m venv .venv && .venv/bin/python -m trainer.main --gin_file=configs/smoke.gin \\\n"
          "        --model_dir=/tmp/smoke   # seconds\n")
  assert list(docs.commands(text)) == [
      (1, "trainer.report", ["--model_dir=DIR"]), (3, "venv", [".venv"]),
      (3, "trainer.main", ["--gin_file=configs/smoke.gin", "--model_dir=/tmp/smoke"])]


@pytest.mark.parametrize("command, problems", [
    ("python -m trainer.main --gin_file=configs/smoke.gin --model_dri=/tmp/x",
     ["line 1: python -m trainer.main has no flag --model_dri (did you mean --model_dir?)"]),
    ("python -m trainer.main --gin_file=configs/smok.gin --model_dir=/tmp/x",
     ["line 1: --gin_file=configs/smok.gin: no such file"]),
    ("python -m trainer.mian --model_dir=/tmp/x", ["line 1: python -m trainer.mian: no such module"]),
    ("python -m trainer.export --model_dir=DIR --modle=NAME",  # its flags are defined under __main__
     ["line 1: python -m trainer.export has no flag --modle (did you mean --model?)"]),
    ("python -m launch.local --num_workers=2 -- --gin_file=configs/smoke.gin --num_workers=2",  # after --: main's
     ["line 1: python -m trainer.main has no flag --num_workers"]),
])
def test_a_misspelt_flag_file_or_module_is_a_problem(command, problems):
  assert docs.command_problems(f"Run `{command}`.") == problems


@pytest.mark.parametrize("command", [
    "python -m trainer.main --gin_file=configs/X.gin [--gin_file=more.gin ...] --model_dir=DIR [--verbosity=1]",
    "python -m trainer.export --model_dir=DIR [--model=NAME] --helpshort",
    "python -m launch.local --num_workers=2 --noisolate_network -- --gin_file=configs/smoke.gin --model_dir=x",
    "python -m benchmarks --jobs=small --width=64 --noquick",  # --width: defined in a comprehension
    "python -m trainer.main --gin_file=mine.gin --model_dir=runs/mine",  # a user's own file, in their directory
    "python -m pytest -m 'not slow' --whatever",  # another project's module: only its existence is checked
])
def test_syntax_lines_absls_flags_and_other_projects_modules_pass(command):
  assert docs.command_problems(f"`{command}`") == []


def test_a_module_added_later_is_found_when_the_docs_name_it(tmp_path, monkeypatch):
  package = tmp_path / "later_pkg"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "evaluate.py").write_text(
      "from absl import app, flags\n"
      "if __name__ == '__main__':\n"
      "  flags.DEFINE_string('model_dir', None, 'The run.')\n"
      "  app.run(lambda argv: None)\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  text = "`python -m later_pkg.evaluate --model_dir=x` and `python -m later_pkg.evaluate --model_dri=x`"
  assert docs.command_problems(text, root=str(tmp_path)) == [
      "line 1: python -m later_pkg.evaluate has no flag --model_dri (did you mean --model_dir?)"]


def test_a_broken_link_or_anchor_is_a_problem(tmp_path):
  (tmp_path / "docs").mkdir()
  (tmp_path / "docs" / "phases.md").write_text("# Phases\n\n## What a phase is\n")
  text = ("# Title\n\nSee [phases](docs/phases.md), [one](docs/phases.md#what-a-phase-is), [up](#title), "
          "[web](https://example.com/x.md) and `[not a link](nowhere.md)`.\n"
          "Broken: [a](docs/phase.md), [b](docs/phases.md#what-phases-are), [c](#titel).\n")
  assert docs.link_problems(text, str(tmp_path)) == [
      "link to docs/phase.md: no such file", "link to docs/phases.md#what-phases-are: no heading with that anchor",
      "link to #titel: no heading with that anchor"]


def test_anchors_are_githubs():
  text = "# The `digits` job: 8x8, offline\n## Results\n## Results\n```\n# not a heading\n```\n"
  assert docs.anchors(text) == {"the-digits-job-8x8-offline", "results", "results-1"}
