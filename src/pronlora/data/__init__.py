"""SpeechOcean762 loading, validation and instance building (the data-preparation stage)."""
