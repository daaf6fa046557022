"""The app tier: the lenses behind the views (`backend.LensBackend`), the web app (`server`) and the static
report's precomputed selections (`precompute`). Above the lenses and the workflows; the CLI sits beside it."""
