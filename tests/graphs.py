"""Checks on traced programs shared by the step's and the cycle's tests."""

import collections

REPLICA_DEVICES = ["CPU:0", "CPU:1"]


def assert_updates_read_their_own_devices_all_reduce(graph, windows: int) -> None:
  """In the traced `graph`, the `windows` windows that call the update have one call per replica each, on its
  replica's device, fed (through data edges) by collectives on that same device."""
  library = graph.as_graph_def().library.function
  is_update = lambda n: "_update" in n.attr["f"].func.name
  calls = 0
  for body in library:
    nodes = {n.name: n for n in body.node_def}
    updates = [n for n in body.node_def if is_update(n)]
    if not updates:
      continue
    # A function may hold several windows: as many calls on every device.
    per_device = collections.Counter(n.device[-5:] for n in updates)
    assert sorted(per_device) == REPLICA_DEVICES and len(set(per_device.values())) == 1, per_device
    calls += len(updates)
    for call in updates:
      reached, todo = set(), [i.split(":")[0] for i in call.input if not i.startswith("^")]
      while todo:  # walk back from the update's inputs to the collectives they come from
        node = nodes.get(todo.pop())
        if node is None or node.name in reached or is_update(node):
          continue
        reached.add(node.name)
        if node.op.startswith("CollectiveReduce"):
          assert node.device == call.device, (call.name, node.name, node.device)
          continue
        todo += [i.split(":")[0] for i in node.input if not i.startswith("^")]
      assert any(nodes[n].op.startswith("CollectiveReduce") for n in reached)
  assert calls == windows * len(REPLICA_DEVICES), (calls, windows)
