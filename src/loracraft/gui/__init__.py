"""The web UI (`loracraft gui`): forms generated from TrainConfig, the job queue, live job pages.

Gradio reads its telemetry switch when it is imported and checks PyPI for a newer release when a page is
built; the UI must work offline and tell nobody it runs, so both are off before any module of this
package imports gradio.
"""

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
