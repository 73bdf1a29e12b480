"""From detections to the files a researcher submits or looks at: the per-task deliverables,
the ISIC submission format and the Task 1 mask post-processing."""
