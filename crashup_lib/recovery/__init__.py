"""Host recovery: the recovery request, the plan, evacuation, events and the pipeline."""
