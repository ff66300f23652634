"""Example Airflow DAGs for the Biblio Ops Workbench (an example: nothing imports this file).

Use these *instead of* `opsbench schedule`, not next to it, or each job runs twice.

- ``biblio_ops_daily_dataset`` — daily 03:00 Asia/Seoul: 10_feedback_health, then 20_build_dataset
  over the last 30 days, each executed by Papermill through ``PapermillOperator``.
- ``biblio_ops_weekly_training`` — Monday 04:00 Asia/Seoul: queue a TRAINING_REQUEST, then run the
  worker once (it fixes the run's dataset/baseline/candidate and drives 30 → 40 → 50 → 60).
  Training stages need a run id that only the worker creates, so they are not PapermillOperator
  tasks of their own.

Requirements on the Airflow workers: ``opslib`` installed from its wheel (``pip install
opslib-<version>-py3-none-any.whl``, torch 2.13.0 first) so the notebooks' kernel can import it, the ``apache-airflow-providers-papermill`` package, and the same
``OPS_*`` settings as everywhere else (``OPS_DB_URL`` pointing at the shared PostgreSQL,
``OPS_OBJECT_STORE_URL`` / ``OPS_MODEL_STORE_URL`` on object storage, ``OPS_CHROMA_HOST``...): the
kernel Papermill starts inherits the task's environment and the notebooks read their settings
from it. See docs/schedules.md.

PapermillOperator executes the notebook directly: the executed copy lands at ``output_nb`` but no
``StageExecution`` row and no HTML report are made. For the workbench's own archive and run
history use ``BashOperator(bash_command="opsbench run 20_build_dataset -p as_of=...")`` instead;
the notebooks behave the same either way.
"""

from __future__ import annotations

from importlib import resources

import pendulum
from airflow import DAG
from airflow.providers.papermill.operators.papermill import PapermillOperator

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
    feedback_health = PapermillOperator(
        task_id="feedback_health",
        input_nb=f"{NOTEBOOKS}/10_feedback_health.ipynb",
        output_nb=ARCHIVE + "/{{ ds_nodash }}/10_feedback_health-{{ ts_nodash }}.ipynb",
        parameters={"window_days": 7},
        kernel_name="python3",
    )
    build_dataset = PapermillOperator(
        task_id="build_dataset",
        input_nb=f"{NOTEBOOKS}/20_build_dataset.ipynb",
        output_nb=ARCHIVE + "/{{ ds_nodash }}/20_build_dataset-{{ ts_nodash }}.ipynb",
        # The window ends at the scheduled tick (not at "now"), so a retried task builds the
        # same dataset; the builder finds an identical one instead of writing it twice.
        parameters={
            "as_of": "{{ data_interval_end.in_timezone('UTC').isoformat() }}",
            "source_window_days": 30,
            "seed": 0,
        },
        kernel_name="python3",
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
