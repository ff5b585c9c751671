"""``--report FILE.html``: placeholder until plots land."""


def require_plotting() -> None:
    pass


def write_report(report, path: str) -> None:
    raise NotImplementedError
