"""bench.suite: which generator loads each workload of the three-node scenario, in what order."""

from kvwire.bench.suite import CLUSTER_WORKLOADS, _cluster_generators


def test_quorum_put_and_get_run_from_both_generators_back_to_back_in_abba_order():
    order = [(mix, consistency, generator)
             for mix, consistency in CLUSTER_WORKLOADS
             for generator in _cluster_generators(mix, consistency, native=True)]
    assert order[:4] == [("put", None, "python"), ("put", None, "native"),
                         ("get", None, "native"), ("get", None, "python")]
    # The other workloads are the Python generator's alone.
    assert all(generator == "python" for _, _, generator in order[4:])
    assert len(order) == len(CLUSTER_WORKLOADS) + 2


def test_without_a_compiled_generator_every_workload_runs_from_python_alone():
    assert [_cluster_generators(mix, consistency, native=False) for mix, consistency in CLUSTER_WORKLOADS] == \
        [("python",)] * len(CLUSTER_WORKLOADS)
