"""Delete every UNREPLIED entry: first a dry run, then for real."""

from conntrack import Conntrack, DeleteResult, Filter


def delete_unreplied(ct: Conntrack) -> DeleteResult:
    unreplied = Filter(unreplied=True)
    preview = ct.delete(unreplied, dry_run=True)  # deletes nothing
    print("would delete", len(preview.matched), "entries by", preview.method)
    for flow in preview.matched[:3]:
        print("  e.g.", flow)
    result = ct.delete(unreplied)
    exact = "" if result.exact else " (from the entry counter)"
    print(f"deleted {result.deleted}{exact} by {result.method}; {result.vanished} had already gone")
    return result


if __name__ == "__main__":
    with Conntrack() as ct:
        delete_unreplied(ct)
