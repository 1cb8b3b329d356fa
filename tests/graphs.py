"""Checks on traced programs shared by the step's and the cycle's tests."""


def assert_updates_read_their_own_devices_all_reduce(graph, windows: int) -> None:
  """In the traced `graph`, each of the `windows` functions that call the update has one call per replica, on
  its replica's device, fed by collectives on that same device."""
  library = graph.as_graph_def().library.function
  bodies = [f for f in library if any("_update" in n.attr["f"].func.name for n in f.node_def)]
  assert len(bodies) == windows
  for body in bodies:
    nodes = {n.name: n for n in body.node_def}
    updates = [n for n in body.node_def if "_update" in n.attr["f"].func.name]
    assert sorted(n.device[-5:] for n in updates) == ["CPU:0", "CPU:1"]
    for call in updates:
      reached, todo = set(), [i.split(":")[0].lstrip("^") for i in call.input]
      while todo:  # walk back from the update's inputs to the collectives they come from
        node = nodes.get(todo.pop())
        if node is None or node.name in reached:
          continue
        reached.add(node.name)
        if node.op.startswith("CollectiveReduce"):
          assert node.device == call.device, (call.name, node.name, node.device)
          continue
        todo += [i.split(":")[0].lstrip("^") for i in node.input]
      assert any(nodes[n].op.startswith("CollectiveReduce") for n in reached)
