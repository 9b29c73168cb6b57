"""The runtime-jobs wire contract: models and configuration shared by workflows, activities and the worker."""
