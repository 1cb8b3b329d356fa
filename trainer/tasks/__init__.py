"""What trainer ships to train: model builders, losses, datasets' preprocessing and quality figures.

Nothing in the core loop imports these; a gin file imports the ones it configures (`import trainer.tasks.gan`),
exactly as it would import a user's own module.
"""
