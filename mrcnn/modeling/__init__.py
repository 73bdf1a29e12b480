"""The detector's stages, one file each, in pipeline order: backbone -> fpn -> anchors / rpn ->
proposal -> roi_align -> heads -> detection (inference) or targets -> losses ->
training_graph (training). `layers` and `boxes` are the pieces every stage shares."""
