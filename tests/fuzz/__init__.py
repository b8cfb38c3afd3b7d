"""Property-based tests (hypothesis) and a coverage-guided fuzzer (atheris) over the frame
parser, the consumer and the JSON API: docs/reliability.md#fuzzing."""
