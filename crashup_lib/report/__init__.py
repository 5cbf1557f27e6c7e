"""`crashup report NODE`: one recovery's timeline, from the events journal (+ the node's recovery request).

  fields.py    an event's fields read defensively (a journal is a file: any line may carry anything)
  timeline.py  events -> typed Timelines (pure)
  text.py      a Timeline as text;  svg.py  as an SVG picture (hand-written, a Gantt-like chart)
"""
