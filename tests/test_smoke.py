

def test_count_on_empty_namespace(ns_ct):
    assert ns_ct.count() == 0
    assert list(ns_ct.dump()) == []
