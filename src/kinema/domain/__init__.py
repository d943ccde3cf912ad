"""Domain types at the bottom of the layers: tasks, outputs, sizes, stages. Imports nothing else of kinema."""
