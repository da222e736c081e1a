"""pytest hooks: the ONNX node-suite pass count appears in every run's terminal summary."""
from tests.node_suite import SUMMARY_KEY


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print graphdl's ONNX backend node-suite count when that test ran."""
    summary = config.stash.get(SUMMARY_KEY, None)
    if summary is None:
        return
    tr = terminalreporter
    tr.write_sep("-", "ONNX backend node suite (graphdl)")
    tr.write_line(f"graphdl passes {summary['passed']}/{summary['total']} cases "
                  f"({summary['excluded']} excluded with reasons in "
                  f"tests/onnx_node_exclusions.txt; {summary['seconds']} s)")
    if summary["excluded_now_passing"]:
        tr.write_line(f"{len(summary['excluded_now_passing'])} excluded cases now pass; "
                      "prune the list: python -m tests.node_suite --update")
