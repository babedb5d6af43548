"""Online experiment analysis: served slates joined with shopper events, per-variant metrics,
differences with confidence intervals, sample-ratio and guardrail checks, and the report.

- `logs`: read the served-slate log and the event log of a state dir, attribute events to slates;
- `stats`: the tests (delta method, two proportions, Poisson bootstrap, SRM chi-square, Gini);
- `analyze`: `analyze(state_dir, ...) -> Analysis` and `exposure(...)` for feedback-loop studies;
- `report`, `svg`: report.md and standalone SVG plots; `cli`: `aisle analyze`.
"""
