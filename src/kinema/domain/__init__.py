"""Domain types at the bottom of the layers: tasks, outputs, sizes, stages, and the API's wire shapes. Imports
nothing else of kinema."""
