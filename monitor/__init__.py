"""fleetpulse monitor: health state machine, history, alerting, dashboard and the `fleetpulse` CLI."""

__all__: list[str] = []
