"""Everything at the browser-facing edge: the web client and the stand-in edge."""
