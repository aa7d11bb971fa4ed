-- Optuna keeps its own database: its table names are generic.
CREATE DATABASE optuna OWNER prunesearch;
