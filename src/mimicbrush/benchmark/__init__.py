"""The paper's benchmark: tracks on disk, the inner-ID track builder, metrics, runner, reports.

See docs/benchmark.md. Entry points: `tracks.load_tracks`, `inner_id.build_inner_id_track`,
`runner.run_benchmark`, `scoring.CaseScorer`, `report.markdown_table`.
"""
