"""The house's layers (docs/architecture.md): every import in crashup_lib points down or sideways, never up, and no
two modules import each other through any path. Imports inside functions count too: deferring one hides a cycle, it
does not remove it. Library modules import crashup_lib at their top; only heavy third-party libraries may be
deferred (and only those named here), so that an agent's monitor or a fence action does not pay for them."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "crashup_lib"

# module (or package prefix) -> layer; the longest matching prefix wins
LAYERS = {
    # leaves: no crashup_lib import but other leaves
    "crashup_lib": 0, "crashup_lib.log": 0, "crashup_lib.deadline": 0, "crashup_lib.presence": 0,
    "crashup_lib.hostmap": 0, "crashup_lib.words": 0, "crashup_lib.proc": 0, "crashup_lib.files": 0,
    # adapters: one outside system each (configuration, Pacemaker, OpenStack APIs, BMCs, local services, databases),
    # and the two agent frameworks (Pacemaker's calling conventions)
    "crashup_lib.config": 1, "crashup_lib.clouds": 1, "crashup_lib.osapi": 1, "crashup_lib.pacemaker": 1,
    "crashup_lib.nova": 1, "crashup_lib.cinder": 1, "crashup_lib.ipmi": 1, "crashup_lib.localservice": 1, "crashup_lib.ocf": 1,
    "crashup_lib.fencing": 1, "crashup_lib.sweep.db": 1,
    "crashup_lib.bus": 1,                   # the notification bus's broker (AMQP through kombu)
    "crashup_lib.libvirt": 1,               # a host's libvirtd: domain states, events (libvirt-python)
    # domain: decisions as data and pure functions, and what observes or records them
    "crashup_lib.rules": 2, "crashup_lib.events": 2, "crashup_lib.health": 2, "crashup_lib.plan": 2, "crashup_lib.storm": 2,
    "crashup_lib.repair": 2, "crashup_lib.rejoin": 2, "crashup_lib.watchdog": 2, "crashup_lib.inventory": 2,
    "crashup_lib.report": 2,                # one recovery's timeline from the journal, as text and SVG
    "crashup_lib.metrics": 2,               # Prometheus metrics from the journal and the requests
    # services: what runs a job end to end
    "crashup_lib.recovery": 3, "crashup_lib.sweep": 3, "crashup_lib.pcs": 3,
    "crashup_lib.guests": 3,                # the node-side guest monitor (its kinds, policy, decide are pure)
    "crashup_lib.maintenance": 3,           # the operator verbs: drain, undrain, evacuate, restore, rejuvenate
    "crashup_lib.isolation": 3,             # the node-side isolation guard (its decide is pure)
    "crashup_lib.isolation.timing": 0,      # its settings and deadline: the fallback fence agent imports them
    # the command
    "crashup_lib.cli": 4,
}
LAYER_NAMES = ("leaves", "adapters", "domain", "services", "cli")
# imports a library module may defer into a function: each costs an agent's start-up tens of ms or more (and
# logging.handlers is needed only where a syslog socket exists)
DEFERRABLE = ("lxml", "openstack", "keystoneauth1", "yaml", "sqlalchemy", "libvirt", "pyghmi", "requests",
              "jsonschema", "pymysql", "logging.handlers",
              "kombu")     # ~80 ms and 10 MB: only the processes that publish to or read the bus load it (bus.py)


def deferrable(target: str) -> bool:
    return any(target == d or target.startswith(d + ".") for d in DEFERRABLE)


def layer_of(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"{module} has no layer: add it to LAYERS in {__file__} and to docs/architecture.md"
    return LAYERS[best]


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import in the file, `from x import y` resolved to x.y
    when y is a module of crashup_lib."""
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                for a in child.names:
                    full = f"{child.module}.{a.name}"
                    is_module = (ROOT.parent / (full.replace(".", "/") + ".py")).exists() or \
                        (ROOT.parent / full.replace(".", "/")).is_dir()
                    found.append((full if is_module else child.module, child.lineno, in_function))
            visit(child, nested)
    visit(tree, False)
    return found


def graph() -> dict[str, list[tuple[str, int, bool]]]:
    return {module_name(p): imports(p) for p in sorted(ROOT.rglob("*.py"))}


def upward(edges) -> list[str]:
    wrong = []
    for module, found in edges.items():
        for target, line, _ in found:
            if target.startswith("crashup_lib") and layer_of(target) > layer_of(module):
                wrong.append(f"{module}:{line} imports {target} ({LAYER_NAMES[layer_of(module)]} -> "
                             f"{LAYER_NAMES[layer_of(target)]})")
    return wrong


def cycles(edges) -> list[list[str]]:
    """Every cycle through crashup_lib modules, each once (a package's __init__ re-exporting its modules is not a
    cycle: a module never imports its own package's __init__ here, see below)."""
    adjacency = {m: sorted({t for t, _, _ in found if t in edges and t != m}) for m, found in edges.items()}
    seen, stack, on_stack, found = set(), [], set(), []

    def walk(m):
        seen.add(m)
        stack.append(m)
        on_stack.add(m)
        for t in adjacency[m]:
            if t in on_stack:
                found.append(stack[stack.index(t):] + [t])
            elif t not in seen:
                walk(t)
        stack.pop()
        on_stack.discard(m)
    for m in sorted(adjacency):
        if m not in seen:
            walk(m)
    return found


def test_no_library_import_points_up_a_layer():
    assert upward(graph()) == []


def test_no_import_cycle():
    edges = graph()
    # `from crashup_lib.rules import X` inside crashup_lib.rules.* goes through the package's __init__, which imports
    # the package's modules: count such an import as the module it really names (the checker sees x.y, not x)
    assert cycles(edges) == []


def test_library_modules_import_crashup_lib_at_their_top():
    deferred = [f"{m}:{line} {target}" for m, found in graph().items() for target, line, inside in found
                if inside and m != "crashup_lib.cli"         # the command loads what its subcommand needs
                and (target.startswith("crashup_lib") or not deferrable(target))]
    assert deferred == []


def test_the_checks_would_catch_the_cycle_the_sweep_and_recovery_once_had():
    """stale/service.py imported recovery/events.py while repair.py imported stale/rules.py."""
    edges = {"crashup_lib.sweep.service": [("crashup_lib.recovery.events", 1, False)],
             "crashup_lib.recovery.events": [], "crashup_lib.repair": [("crashup_lib.sweep.rules", 3, True)],
             "crashup_lib.sweep.rules": [("crashup_lib.repair", 9, True)]}
    assert cycles(edges)
    assert upward({"crashup_lib.rules.tables": [("crashup_lib.sweep.fix", 1, True)]})


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_has_a_layer_and_stays_small(path):
    layer_of(module_name(path))
    lines = len(path.read_text().splitlines())
    tables = path.parent.name == "rules"                # decision tables are data
    assert lines <= (900 if tables else 520), f"{path} has {lines} lines: one job per module"
