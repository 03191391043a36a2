"""The chunk task's one argument: small, read-only, picklable for process and Dask workers, and one value to
Prefect (which otherwise walks every symbol of a chunk twice per task run)."""

from __future__ import annotations

import datetime as dt
import pickle

import cloudpickle
import pytest
from prefect.utilities.collections import visit_collection

from backtest.engine.planning import make_plan, plan_chunks, resolve_universe
from tasks.chunks import ChunkJob, PriceSource, backtest_chunk
from tests.flows.test_study_flow import params


@pytest.fixture
def job(store, tmp_path):
    p = params(store, tmp_path)
    universe = resolve_universe(store.catalog())
    plan = make_plan(p.to_config(), universe)
    spec = plan_chunks(plan, universe, store.data_fingerprint, 8, 1)[1]
    return ChunkJob(spec, plan, PriceSource(str(store.root), dt.date(2020, 1, 1), str(tmp_path / "prices")))


def test_a_chunk_job_is_one_value_to_prefect_and_names_its_task_run(job):
    seen = []
    visit_collection({"job": job}, visit_fn=lambda x: seen.append(x) or x, return_data=False)
    assert [x for x in seen if not isinstance(x, dict | str)] == [job]  # not its spec, symbols or folds
    assert backtest_chunk.task_run_name.format(job=job) == "backtest-0001"  # as Prefect names the run
    assert job.index == job.spec.index == 1 and "8 symbols" in repr(job)


def test_a_chunk_job_is_read_only_and_travels_to_other_processes(job):
    with pytest.raises(AttributeError, match="read-only"):
        job.spec = None
    for dumps in (pickle.dumps, cloudpickle.dumps):
        back = pickle.loads(dumps(job))
        assert back.spec == job.spec and back.source == job.source
        assert back.plan.folds == job.plan.folds and (back.plan.combos == job.plan.combos).all()
