"""The job queue: training runs stored in SQLite, run one after another (or N at once) as
`loracraft train` subprocesses that outlive the process that started them."""
