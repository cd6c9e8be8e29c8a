"""Features: vocabularies, encoders, the feature spec, and the transforms shared by training and serving."""
