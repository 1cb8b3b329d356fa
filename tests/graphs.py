"""Checks on traced programs shared by the step's and the cycle's tests."""

import collections


def assert_updates_read_their_own_devices_all_reduce(graph, windows: int) -> None:
  """In the traced `graph`, the update functions of `windows` windows are called; every function that calls one
  calls it once per replica, on its replica's device, fed by collectives on that same device. (A straight-line
  cycle calls several models' updates from one function, each once per replica: never one window twice.)"""
  library = graph.as_graph_def().library.function
  calls_update = lambda n: "_update" in n.attr["f"].func.name
  bodies = [f for f in library if any(calls_update(n) for n in f.node_def)]
  callees = collections.defaultdict(set)  # device -> the update functions called there
  for body in bodies:
    nodes = {n.name: n for n in body.node_def}
    updates = [n for n in body.node_def if calls_update(n)]
    by_device = collections.defaultdict(list)
    for n in updates:
      by_device[n.device[-5:]].append(n.attr["f"].func.name)
    assert sorted(by_device) == ["CPU:0", "CPU:1"] and len(by_device["CPU:0"]) == len(by_device["CPU:1"]), (
        body.signature.name, dict(by_device))
    for device, names in by_device.items():
      assert len(set(names)) == len(names), (body.signature.name, names)  # no window twice in one function
      callees[device] |= set(names)
    for call in updates:
      # Data edges only, and not through another window's update: in a function holding several windows, control
      # edges and the other update lead to the other window's collective.
      reached, todo = set(), [i.split(":")[0] for i in call.input if not i.startswith("^")]
      while todo:  # walk back from the update's inputs to the collectives they come from
        node = nodes.get(todo.pop())
        if node is None or node.name in reached or calls_update(node):
          continue
        reached.add(node.name)
        if node.op.startswith("CollectiveReduce"):
          assert node.device == call.device, (call.name, node.name, node.device)
          continue
        todo += [i.split(":")[0] for i in node.input if not i.startswith("^")]
      assert any(nodes[n].op.startswith("CollectiveReduce") for n in reached)
  assert [len(c) for c in callees.values()] == [windows, windows], dict(callees)
