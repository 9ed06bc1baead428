from conntrack import Conntrack, Filter

with Conntrack() as ct:  # this process's network namespace; needs CAP_NET_ADMIN
    print(ct.count(), "of", ct.limit(), "entries in use")
    for flow in ct.dump(Filter(proto="tcp", state="ESTABLISHED")):
        print(flow.orig.src, flow.orig.sport, "->", flow.orig.dst, flow.orig.dport, flow.timeout)
    print(ct.count(Filter(unreplied=True)), "entries never saw a reply")
    preview = ct.delete(Filter(unreplied=True), dry_run=True)  # deletes nothing
    print("a delete would remove", len(preview.matched), "entries by", preview.method)
