"""Example Airflow DAGs for the Biblio Ops Workbench (an example: nothing imports this file).

Use these *instead of* `opsbench schedule`, not next to it, or each job runs twice.

- ``biblio_ops_daily_dataset`` — daily 03:00 Asia/Seoul: 10_feedback_health, then 20_build_dataset
  over the last 30 days, each executed by Papermill's API with the ``opsbench`` engine.
- ``biblio_ops_weekly_training`` — Monday 04:00 Asia/Seoul: queue a TRAINING_REQUEST, then run the
  worker once (it fixes the run's dataset/baseline/candidate and drives 30 → 40 → 50 → 60).
  Training stages need a run id that only the worker creates, so they are not Papermill tasks of
  their own.

Requirements on the Airflow workers: ``opslib`` installed from its wheel (``pip install
opslib-<version>-py3-none-any.whl``, torch 2.13.0 first) so the notebooks' kernel can import it and
Papermill finds the ``opsbench`` engine (the wheel registers it), and the same
``OPS_*`` settings as everywhere else (``OPS_DB_URL`` pointing at the shared PostgreSQL,
``OPS_OBJECT_STORE_URL`` / ``OPS_MODEL_STORE_URL`` on object storage, ``OPS_CHROMA_HOST``...): the
kernel Papermill starts inherits the task's environment and the notebooks read their settings
from it. See docs/schedules.md.

The ``opsbench`` Papermill engine (opslib/execution/papermill_engine.py) makes a Papermill task
behave like ``opsbench run``: unknown or mistyped parameters fail the task before anything
executes; otherwise the execution gets its ``StageExecution`` row, its archived .ipynb and HTML
report under ``OPS_RUNS_DIR`` and its run-index entry, and the executed notebook also lands at the
task's output path. A failed stage fails the task (``StageFailed``). ``PapermillOperator`` takes no
engine name (the provider picks one only for a remote kernel), hence a ``PythonOperator`` calling
``papermill.execute_notebook(..., engine_name="opsbench")``; ``BashOperator(bash_command="papermill
--engine opsbench IN OUT -p window_days 7")`` or ``"opsbench run 10_feedback_health -p window_days=7"``
do the same.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import pendulum
from airflow import DAG

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.providers.standard.operators.python import PythonOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator
    from airflow.operators.python import PythonOperator

# The stage notebooks ship inside the installed package (opslib.notebooks).
NOTEBOOKS = str(resources.files("opslib.notebooks"))
ARCHIVE = "/srv/biblio-ops/runs/airflow"  # or an s3:// / gs:// prefix (Papermill writes through its I/O handlers)
OPSBENCH = "opsbench"  # the console script of the installed wheel
SEOUL = pendulum.timezone("Asia/Seoul")


def execute_stage(input_nb: str, output_nb: str, parameters: dict[str, Any]) -> None:
    """Execute a stage notebook with Papermill's ``opsbench`` engine: validated, recorded in the
    Metadata DB, archived with its HTML report, indexed; a copy at ``output_nb``."""
    import papermill as pm

    pm.execute_notebook(input_nb, output_nb, parameters=parameters, engine_name="opsbench", progress_bar=False)


def queue_training_request(airflow_run_id: str) -> int:
    """Publish a scheduled TRAINING_REQUEST (the worker picks the dataset); returns the message id."""
    from opslib.control.messages import new_training_request
    from opslib.control.queue import publish
    from opslib.infra.workspace import open_workspace

    ws = open_workspace()  # the OPS_* settings of the Airflow worker
    message = new_training_request(
        trigger_source="schedule", requested_by="airflow", reason=f"airflow {airflow_run_id}"
    )
    return publish(ws.db, message)


default_args = {
    "owner": "biblio-ops",
    "retries": 1,
    "retry_delay": pendulum.duration(minutes=10),
    "execution_timeout": pendulum.duration(hours=2),
}

with DAG(
    dag_id="biblio_ops_daily_dataset",
    description="feedback health + training dataset (retrieval-group-v2) over the last 30 days",
    schedule="0 3 * * *",  # read in the start_date's time zone: 03:00 KST
    start_date=pendulum.datetime(2026, 1, 1, tz=SEOUL),
    catchup=False,  # like `opsbench schedule`: after downtime only the latest interval runs
    max_active_runs=1,
    default_args=default_args,
    tags=["biblio-ops"],
) as daily_dataset:
    # op_kwargs are templated: the paths and parameters below are rendered per task run.
    feedback_health = PythonOperator(
        task_id="feedback_health",
        python_callable=execute_stage,
        op_kwargs={
            "input_nb": f"{NOTEBOOKS}/10_feedback_health.ipynb",
            "output_nb": ARCHIVE + "/{{ ds_nodash }}/10_feedback_health-{{ ts_nodash }}.ipynb",
            "parameters": {"window_days": 7},
        },
    )
    build_dataset = PythonOperator(
        task_id="build_dataset",
        python_callable=execute_stage,
        op_kwargs={
            "input_nb": f"{NOTEBOOKS}/20_build_dataset.ipynb",
            "output_nb": ARCHIVE + "/{{ ds_nodash }}/20_build_dataset-{{ ts_nodash }}.ipynb",
            # The window ends at the scheduled tick (not at "now"), so a retried task builds the
            # same dataset; the builder finds an identical one instead of writing it twice.
            "parameters": {
                "as_of": "{{ data_interval_end.in_timezone('UTC').isoformat() }}",
                "source_window_days": 30,
                "seed": 0,
            },
        },
    )
    feedback_health >> build_dataset

with DAG(
    dag_id="biblio_ops_weekly_training",
    description="queue a TRAINING_REQUEST and let the ML Lifecycle Worker drive the run",
    schedule="0 4 * * 1",  # Monday 04:00 KST
    start_date=pendulum.datetime(2026, 1, 1, tz=SEOUL),
    catchup=False,
    max_active_runs=1,
    default_args={**default_args, "retries": 0},  # a retried request would queue a second run
    tags=["biblio-ops"],
) as weekly_training:
    # A scheduled request, like `opsbench schedule`'s: published straight onto the queue
    # (`opsbench request-training` is the operator's guarded, audited action, not for schedulers).
    request_training = PythonOperator(
        task_id="request_training",
        python_callable=queue_training_request,
        op_kwargs={"airflow_run_id": "{{ run_id }}"},
    )
    # One worker pass: reconcile stalled runs, take the request (refused with a reason if no
    # eligible dataset exists), train, evaluate and — with OPS_AUTO_CUTOVER=true — release.
    # A long-lived `opsbench worker` deployment can replace this task.
    worker_once = BashOperator(
        task_id="worker_once",
        bash_command=OPSBENCH + " worker --once --name airflow-worker",
        execution_timeout=pendulum.duration(hours=6),
    )
    request_training >> worker_once
