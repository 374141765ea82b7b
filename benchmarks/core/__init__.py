"""The decision-core benchmark (issue 6, item 7): payauth's policy and model against the
fastest rules engines, CEL runtimes and tree-model runtimes callable from Python."""
