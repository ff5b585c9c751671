"""natkit's command line: thin edges over the library (parse, call, render)."""
